//! A test's own network namespace (iproute2), joined to the test's namespace by two veth
//! links, so that one node can be cut off from Redis while the test still reaches it:
//!
//! - the **store link** (`10.231.<n>.1` here, `.2` there): the node reaches Redis through it;
//! - the **client link** (`10.232.<n>.1` here, `.2` there): the test reaches the node, and
//!   the node a backend, through it.
//!
//! The addresses are link-local to these two veth pairs, which exist only between this
//! test's namespaces: nothing else can reach them. [`Netns::cut`] takes the store link down
//! (packets are dropped, connections hang: a partition, not a refusal); [`Netns::heal`]
//! brings it back. Dropping the guard deletes the namespace and both links. Needs root.

use std::process::Command;

/// The namespace and its two links.
pub struct Netns {
    name: String,
    store_link: String,
    n: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Makes the namespace and its links; an error when this process may not (not root).
    pub fn new() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let n = (id % 250) as u8 + 1;
        let name = format!("portico-{id}");
        let this = Self { name: name.clone(), store_link: format!("ps{id}"), n };
        ip(&["netns", "add", &name])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        for (link, net) in [(format!("ps{id}"), 231), (format!("pc{id}"), 232)] {
            let peer = format!("{link}n");
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &name])?;
            ip(&["addr", "add", &format!("10.{net}.{n}.1/30"), "dev", &link])?;
            ip(&["link", "set", &link, "up"])?;
            ip(&["-n", &name, "addr", "add", &format!("10.{net}.{n}.2/30"), "dev", &peer])?;
            ip(&["-n", &name, "link", "set", &peer, "up"])?;
        }
        Ok(this)
    }

    /// This side of the store link (where Redis must also listen).
    pub fn store_here(&self) -> String {
        format!("10.231.{}.1", self.n)
    }

    /// This side of the client link (where a backend the node uses listens).
    pub fn client_here(&self) -> String {
        format!("10.232.{}.1", self.n)
    }

    /// The node's side of the client link (where it listens for the test).
    pub fn client_there(&self) -> String {
        format!("10.232.{}.2", self.n)
    }

    /// The command that runs a program inside the namespace.
    pub fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name].iter().map(|s| s.to_string()).collect()
    }

    /// Cuts the store link: the node's packets to Redis go nowhere.
    pub fn cut(&self) {
        ip(&["link", "set", &self.store_link, "down"]).unwrap();
    }

    /// Brings the store link back.
    pub fn heal(&self) {
        ip(&["link", "set", &self.store_link, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth ends in it, and so their peers here.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.store_link]);
    }
}
