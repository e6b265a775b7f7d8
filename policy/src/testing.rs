//! For tests of limits on fixed windows, here and in the crates above.

/// Waits, when fewer than 5 s are left in the current minute, for the next one to start, so a
/// test's hits on a per-minute fixed window (aligned to the epoch) fall in one window.
pub async fn fresh_minute() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        % 60.0;
    if into > 55.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(60.05 - into)).await;
    }
}
