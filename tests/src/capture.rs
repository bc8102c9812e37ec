//! Packet captures: tcpdump in a namespace, read back with tshark — an independent view of what
//! crossed the wire.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// A running tcpdump; stopped (and its file removed) when dropped.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts tcpdump in `ns` on `iface` (`any` for every interface) with the capture filter
    /// `filter`, and returns once it listens. A short snapshot and a large buffer, so that a
    /// burst loses nothing.
    ///
    /// # Panics
    /// tcpdump cannot start, or does not listen within 5 s.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Self {
        Self::start_snap(ns, iface, filter, 512)
    }

    /// As [`Capture::start`], keeping `snaplen` bytes of each frame (enough to verify checksums).
    ///
    /// # Panics
    /// As [`Capture::start`].
    pub fn start_snap(ns: &str, iface: &str, filter: &str, snaplen: u32) -> Self {
        Self::spawn(ns, iface, filter, snaplen, None)
    }

    /// The first `count` packets matching `filter` on `iface` in `ns` while `traffic` runs,
    /// decoded by tshark with `fields` (and the malformed and expert markers).
    ///
    /// # Panics
    /// tcpdump cannot start, or fewer than `count` packets come within 30 s.
    pub fn first(ns: &str, iface: &str, filter: &str, count: usize, fields: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
        let mut cap = Self::spawn(ns, iface, filter, 512, Some(count));
        traffic();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while cap.child.try_wait().ok().flatten().is_none() {
            assert!(std::time::Instant::now() < deadline, "fewer than {count} packets matched {filter:?} on {iface} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let fields: Vec<&str> = fields.iter().copied().chain(["_ws.malformed", "_ws.expert"]).collect();
        cap.decode("frame", &fields)
    }

    fn spawn(ns: &str, iface: &str, filter: &str, snaplen: u32, count: Option<usize>) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gre-capture-{}-{n}.pcap", std::process::id()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", &snaplen.to_string(), "-B", "16384", "-w"]).arg(&path);
        if let Some(count) = count {
            cmd.args(["-c", &count.to_string()]);
        }
        let mut child = cmd.arg(filter).stderr(Stdio::piped()).spawn().expect("tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("tcpdump listening");
        Self { child, path }
    }

    /// Stops the capture (tcpdump flushes on SIGINT) and decodes it with tshark: one JSON
    /// object per packet that matches `display_filter`, with the `fields` asked for.
    ///
    /// # Panics
    /// tshark fails or prints something that is not JSON.
    pub fn decode(&mut self, display_filter: &str, fields: &[&str]) -> Vec<Value> {
        self.decode_args(&[], display_filter, fields)
    }

    /// The frames tshark finds fault with, checksums verified: malformed, an expert error, a bad
    /// IPv4, ICMP, TCP, UDP or GRE checksum. Empty for a clean capture. What TCP and UDP carry
    /// is read as plain data: test payloads are random bytes, which a dissector chosen by port
    /// number (IRC, say) would call malformed. A TCP checksum of zero written as 0xffff (what
    /// the kernel's software checksum does; equal in ones' complement, and receivers accept it)
    /// is not a fault, though tshark flags it.
    ///
    /// # Panics
    /// As [`Capture::decode`].
    pub fn faults(&mut self) -> Vec<Value> {
        let args = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"];
        let args = [&args[..], &["-d", "tcp.port==1-65535,data", "-d", "udp.port==1-65535,data"]].concat();
        let bad = ["ip", "icmp", "icmpv6", "udp", "gre"].map(|p| format!("{p}.checksum.status == \"Bad\""));
        let filter =
            format!("_ws.malformed || ((_ws.expert.severity >= error || tcp.checksum.status == \"Bad\") && !tcp.checksum.ffff) || {}", bad.join(" || "));
        self.decode_args(&args, &filter, &["frame.number", "frame.protocols", "_ws.expert.message"])
    }

    /// tshark on the capture with extra arguments (preferences, decode-as rules).
    fn decode_args(&mut self, args: &[&str], display_filter: &str, fields: &[&str]) -> Vec<Value> {
        self.stop();
        let mut cmd = Command::new("tshark");
        cmd.args(args);
        cmd.arg("-r").arg(&self.path).args(["-Y", display_filter, "-T", "json"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().expect("tshark");
        assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("tshark JSON")
    }

    /// Stops the capture (once; tcpdump flushes on SIGINT); the file stays until the capture is
    /// dropped.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let _ = self.child.wait();
    }

    /// The capture file (pcap).
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The first (outermost) value of field `name` in one packet of [`Capture::decode`].
#[must_use]
pub fn first_of(packet: &Value, name: &str) -> Option<String> {
    field(packet, name).into_iter().next()
}

/// The values of field `name` in one packet of [`Capture::decode`] (empty if absent).
pub fn field(packet: &Value, name: &str) -> Vec<String> {
    packet["_source"]["layers"][name].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
}
