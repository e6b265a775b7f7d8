//! PostgreSQL and Redis of the tests' own, from Debian's binaries, speaking TLS with
//! certificates made by the tests, on loopback ports of their own; stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{Ca, Pair};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's PostgreSQL server binaries, the newest installed.
fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb under /usr/lib/postgresql")
}

/// Runs a PostgreSQL binary as the `postgres` user (the server refuses to run as root).
fn as_postgres(bin: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn give_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A PostgreSQL cluster of its own with `ssl = on`: connections without TLS are refused, and
/// with `client_certs` so are those without a certificate from the CA.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl OwnPostgres {
    pub fn start(ca: &Ca, server: &Pair, client_certs: bool) -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // The postgres user must reach the directory it works in.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir(&data).unwrap();
        give_to_postgres(&data);
        let bin = postgres_bin();
        let data_s = data.to_str().unwrap();
        as_postgres(
            &bin.join("initdb"),
            &["-D", data_s, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        std::fs::write(data.join("server.crt"), &server.cert_pem).unwrap();
        std::fs::write(data.join("server.key"), &server.key_pem).unwrap();
        std::fs::write(data.join("ca.crt"), &ca.cert_pem).unwrap();
        let port = free_port();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data_s}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'ca.crt'\nfsync = off\n"
        );
        let mut c = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        c.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), c).unwrap();
        let cert = if client_certs {
            " clientcert=verify-ca"
        } else {
            ""
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\nhostssl all all 127.0.0.1/32 trust{cert}\n\
                 hostnossl all all 127.0.0.1/32 reject\n"
            ),
        )
        .unwrap();
        give_to_postgres(&data);
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let log = dir.path().join("postgres.log");
        std::fs::write(&log, "").unwrap();
        give_to_postgres(&log);
        as_postgres(
            &bin.join("pg_ctl"),
            &["-D", data_s, "-l", log.to_str().unwrap(), "-w", "start"],
        );
        wait_for_port(port, "PostgreSQL", &log);
        OwnPostgres {
            dir,
            data,
            bin,
            port,
        }
    }

    /// Stops the server at once (as a crash or a lost node would): its clients' connections
    /// break and new ones are refused until [`OwnPostgres::start_again`].
    pub fn stop(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&self) {
        let log = self.dir.path().join("postgres.log");
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        wait_for_port(self.port, "PostgreSQL", &log);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `redis-server` of its own listening on a TLS port only; with `client_certs`, clients must
/// present a certificate from the CA.
pub struct OwnRedis {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl OwnRedis {
    pub fn start(ca: &Ca, server: &Pair, client_certs: bool) -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca_path = ca.write(d, "ca");
        let (cert, key) = server.write(d, "server");
        let port = free_port();
        let log = d.join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_path)
            .args([
                "--tls-auth-clients",
                if client_certs { "yes" } else { "no" },
            ])
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's redis-server");
        wait_for_port(port, "redis-server", &log);
        OwnRedis {
            child,
            _dir: dir,
            port,
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
