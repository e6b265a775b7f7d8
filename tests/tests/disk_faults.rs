//! The embedded store on a disk that fills up (a small tmpfs of the test's own) and on one whose
//! database turns read-only (an ext4 image of the test's own, its files made immutable with
//! `chattr +i`: writes through the files SQLite holds open then fail, as on a disk the kernel
//! remounted read-only; a read-only remount itself is refused while SQLite holds its files open
//! for writing). The disks are mounted here, so the test runs as root, as the README's test
//! command does. While SQLite cannot commit, exports get a retryable error, `/readyz` answers
//! 503 with the reason and `meshlens_store_writable` is 0; once the disk takes writes again, the
//! store probe makes meshlens ready again with no export needed, and every acknowledged span is
//! there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshlens_tests::{trace_hex, trace_request, TestEnv};

/// A disk mounted on a directory of its own; unmounted when dropped.
struct Disk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {} (this test mounts disks of its own: it needs root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Disk {
    /// A tmpfs of `size` (`16m`).
    fn tmpfs(size: &str) -> Disk {
        let opts = format!("size={size}");
        Disk::mount(&["-t", "tmpfs", "-o", &opts, "tmpfs"])
    }

    /// An ext4 file system in an image file of `mib` MiB, on a loop device.
    fn ext4(mib: u64) -> Disk {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(mib << 20).unwrap();
        let path = image.path().to_str().unwrap().to_string();
        // Debian keeps it in /usr/sbin, which a non-login shell's PATH may lack.
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mkfs.ext4");
        run(mkfs, &["-q", "-F", &path]);
        let disk = Disk::mount(&["-o", "loop", &path]);
        // The mounted image stays (the loop device holds it) until the unmount.
        drop(image);
        disk
    }

    fn mount(args: &[&str]) -> Disk {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        let mut args = args.to_vec();
        args.push(dir.to_str().unwrap());
        run("mount", &args);
        Disk {
            dir,
            _parent: parent,
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.dir.to_str().unwrap()])
            .status();
    }
}

/// Fills what is left of the disk at `dir` with a file (`dd` stops at ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
        ])
        .output()
        .unwrap();
    assert!(filler.metadata().unwrap().len() > 0);
    filler
}

/// Every span of these traces (`trace_request`'s: 3 spans below 100, 200 from 100) is stored.
async fn assert_stored(env: &TestEnv, traces: &[u64]) {
    for &trace in traces {
        let (status, body) = env
            .get_json(&format!("/api/traces/{}", trace_hex(trace)))
            .await;
        assert_eq!(status, 200, "trace {trace}: {body}");
        let want = if trace < 100 { 3 } else { 200 };
        assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), want);
    }
}

/// meshlens with its database on `disk`, probed every 200 ms, ready, with trace 1 of `service`
/// acknowledged.
async fn start_on(
    disk: &Disk,
    service: &str,
) -> (
    TestEnv,
    opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient<
        tonic::transport::Channel,
    >,
) {
    let db = disk.dir.join("meshlens.db");
    let env = TestEnv::start_with(|c| {
        c.storage.database_url = format!("sqlite://{}", db.display());
        c.storage.probe_interval = Duration::from_millis(200);
    })
    .await;
    let mut client = env.grpc().await;
    client.export(trace_request(service, 1, 3)).await.unwrap();
    assert_eq!(env.readyz().await.0, 200);
    (env, client)
}

#[tokio::test]
async fn a_full_disk_makes_meshlens_unready_until_it_takes_writes_again() {
    let disk = Disk::tmpfs("16m");
    let (env, mut client) = start_on(&disk, "disk").await;

    // Full: exports are refused retryably (never as bad data), and readiness says why.
    let filler = fill(&disk.dir);
    let (mut refused, mut accepted) = (None, vec![1]);
    for trace in 100..400 {
        // Large enough exports that the WAL needs new pages within a few of them.
        match client.export(trace_request("disk", trace, 200)).await {
            Ok(_) => accepted.push(trace),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("an export refused once the disk is full");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let why = env.wait_ready(503).await;
    assert!(
        why.contains("the store cannot commit") && why.contains("full"),
        "{why}"
    );
    assert_eq!(env.metric("meshlens_store_writable", "").await, 0.0);

    // Room again: ready by the probe alone, and exports are taken.
    std::fs::remove_file(&filler).unwrap();
    env.wait_ready(200).await;
    assert_eq!(env.metric("meshlens_store_writable", "").await, 1.0);
    client.export(trace_request("disk", 2, 3)).await.unwrap();

    accepted.push(2);
    assert_stored(&env, &accepted).await;
    env.stop().await;
}

/// `chattr` on each of `files` that exists (`+i`: no write reaches it, through any descriptor).
fn chattr(flag: &str, files: &[PathBuf]) {
    for f in files.iter().filter(|f| f.exists()) {
        run("chattr", &[flag, f.to_str().unwrap()]);
    }
}

#[tokio::test]
async fn a_database_turned_read_only_makes_meshlens_unready_until_it_is_writable_again() {
    let disk = Disk::ext4(32);
    let db = disk.dir.join("meshlens.db");
    let (env, mut client) = start_on(&disk, "ro").await;

    // Read-only: the next export is refused retryably (never as bad data), and readiness says
    // why.
    let files: Vec<PathBuf> = ["", "-wal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .collect();
    chattr("+i", &files);
    let refused = client
        .export(trace_request("ro", 100, 200))
        .await
        .expect_err("an export refused once the database is read-only");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let why = env.wait_ready(503).await;
    assert!(why.contains("the store cannot commit"), "{why}");
    assert_eq!(env.metric("meshlens_store_writable", "").await, 0.0);
    let refused = env.post_otlp(&trace_request("ro", 101, 3)).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    // Writable again: ready by the probe alone, and exports are taken.
    chattr("-i", &files);
    env.wait_ready(200).await;
    assert_eq!(env.metric("meshlens_store_writable", "").await, 1.0);
    client.export(trace_request("ro", 2, 3)).await.unwrap();
    client.export(trace_request("ro", 102, 200)).await.unwrap();
    assert_stored(&env, &[1, 2, 102]).await;
    env.assert_not_stored(&[100, 101]).await;
    env.stop().await;
}
