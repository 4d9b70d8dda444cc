//! DNS queries for DNS-01: is the challenge's TXT record served yet, and is its name
//! delegated with a CNAME? Asked of the servers `tls.dns_resolvers` lists, or else of the
//! zone's authoritative servers (found through the system's resolver).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::udp::UdpClientStream;

use crate::DnsError;

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

fn lookup_error(message: String) -> DnsError {
    DnsError::Unreachable { provider: "DNS", message }
}

/// Asks `server` for `name`'s records of `kind`; the answers' data.
async fn query(server: SocketAddr, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsError> {
    let fqdn = Name::from_str(&format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| DnsError::Config(format!("{name} is not a DNS name: {e}")))?;
    let stream =
        UdpClientStream::builder(server, TokioRuntimeProvider::new()).with_timeout(Some(QUERY_TIMEOUT)).build();
    let (mut client, background) = Client::connect(stream).await.map_err(|e| lookup_error(format!("{server}: {e}")))?;
    let task = tokio::spawn(background);
    let answer = client.query(fqdn, DNSClass::IN, kind).await;
    task.abort();
    let answer = answer.map_err(|e| lookup_error(format!("{server}: {e}")))?;
    Ok(answer.answers().iter().map(|r| r.data().clone()).collect())
}

/// The TXT values `server` serves at `name`.
pub async fn txt(server: SocketAddr, name: &str) -> Result<Vec<String>, DnsError> {
    Ok(query(server, name, RecordType::TXT)
        .await?
        .into_iter()
        .filter_map(|data| match data {
            RData::TXT(txt) => {
                Some(txt.txt_data().iter().map(|part| String::from_utf8_lossy(part)).collect::<String>())
            }
            _ => None,
        })
        .collect())
}

/// Where `name` is delegated to by a CNAME, following up to eight of them; `name` itself
/// when it has none.
pub async fn follow_cname(servers: &[SocketAddr], name: &str) -> Result<String, DnsError> {
    let mut current = name.trim_end_matches('.').to_owned();
    for _ in 0..8 {
        let mut next = None;
        for server in servers {
            match query(*server, &current, RecordType::CNAME).await {
                Ok(answers) => {
                    next = answers.into_iter().find_map(|data| match data {
                        RData::CNAME(target) => Some(target.0.to_ascii().trim_end_matches('.').to_owned()),
                        _ => None,
                    });
                    break;
                }
                Err(e) => {
                    tracing::debug!(%server, name = current, error = %e, "CNAME query failed; trying the next server")
                }
            }
        }
        match next {
            Some(target) if target != current => current = target,
            _ => return Ok(current),
        }
    }
    Ok(current)
}

/// The system's resolvers (`/etc/resolv.conf`), port 53.
pub fn system_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| IpAddr::from_str(ip.trim()).ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The addresses of `zone`'s authoritative servers, asked of `resolvers`.
pub async fn authoritative(resolvers: &[SocketAddr], zone: &str) -> Result<Vec<SocketAddr>, DnsError> {
    let mut last = lookup_error(format!("no resolver answered for the servers of {zone}"));
    for resolver in resolvers {
        let names = match query(*resolver, zone, RecordType::NS).await {
            Ok(answers) => answers
                .into_iter()
                .filter_map(|data| match data {
                    RData::NS(ns) => Some(ns.0.to_ascii()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                last = e;
                continue;
            }
        };
        let mut servers = Vec::new();
        for name in names {
            for kind in [RecordType::A, RecordType::AAAA] {
                for data in query(*resolver, &name, kind).await.unwrap_or_default() {
                    match data {
                        RData::A(a) => servers.push(SocketAddr::new(IpAddr::V4(a.0), 53)),
                        RData::AAAA(a) => servers.push(SocketAddr::new(IpAddr::V6(a.0), 53)),
                        _ => {}
                    }
                }
            }
        }
        if !servers.is_empty() {
            return Ok(servers);
        }
    }
    Err(last)
}

/// Waits until every one of `servers` serves every one of `values` at `name`, polling, for
/// at most `timeout`.
pub async fn wait_for_txt(
    servers: &[SocketAddr],
    name: &str,
    values: &[String],
    timeout: Duration,
) -> Result<(), DnsError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let mut missing = None;
        for server in servers {
            let served = txt(*server, name).await.unwrap_or_default();
            if let Some(value) = values.iter().find(|v| !served.contains(v)) {
                missing = Some((server, value));
                break;
            }
        }
        let Some((server, value)) = missing else { return Ok(()) };
        if started.elapsed() + pause > timeout {
            return Err(lookup_error(format!(
                "{server} did not serve the TXT value {value:?} at {name} within {timeout:?}"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
