//! A server's CPU time and peak RSS, read from /proc.

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// The kernel's USER_HZ, which is 100 on Linux for every common architecture.
fn clock_ticks() -> f64 {
    100.0
}

/// Peak resident set size (VmHWM) in MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time the hypervisor gave to other guests while this machine's CPUs wanted to run
/// (`steal`, summed over CPUs), in seconds since boot.
pub fn host_steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let steal: f64 = cpu.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal / clock_ticks())
}

/// ` host_steal_ms=N` for the steal time between two readings of `host_steal_seconds`, or nothing
/// where /proc/stat could not be read.
pub fn host_steal_field(from: Option<f64>, to: Option<f64>) -> String {
    from.zip(to)
        .map(|(a, b)| format!(" host_steal_ms={:.0}", (b - a) * 1000.0))
        .unwrap_or_default()
}
