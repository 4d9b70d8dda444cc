//! RFC 2136 dynamic updates signed with TSIG (RFC 8945): BIND, Knot, PowerDNS, Technitium.
//! The protocol cannot list zones, so the account names them; a record has no id, so its
//! id is its name and value, and it is deleted by value (RFC 2136 §2.5.4), leaving any
//! other value at the same name.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures_util::StreamExt;
use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_client::proto::rr::rdata::TXT;
use hickory_client::proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::udp::UdpClientStream;
use hickory_client::proto::xfer::DnsResponse;
use hickory_client::proto::xfer::{DnsHandle, DnsRequest, DnsRequestOptions};

use crate::{DnsError, DnsProvider, RecordId, Zone};

const KIND: &str = "RFC2136";
/// The TTL of challenge records.
const TTL: u32 = 60;

/// A DNS server that takes TSIG-signed updates for the zones it names.
pub struct Rfc2136 {
    server: SocketAddr,
    signer: TSigner,
    zones: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136").field("server", &self.server).field("zones", &self.zones).finish_non_exhaustive()
    }
}

fn name(text: &str) -> Result<Name, DnsError> {
    Name::from_str(&format!("{}.", text.trim_end_matches('.')))
        .map_err(|e| DnsError::Config(format!("{text} is not a DNS name: {e}")))
}

impl Rfc2136 {
    /// An account: the server (`ip:port`), the TSIG key's name, algorithm (`hmac-sha256`,
    /// `hmac-sha384`, `hmac-sha512`) and base64 secret, and the zones it may update
    /// (comma-separated).
    pub fn new(
        server: &str,
        key_name: &str,
        algorithm: &str,
        secret: &str,
        zones: &str,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let config = |what: String| DnsError::Config(what);
        let server =
            server.parse().map_err(|_| config(format!("server {server:?} is not an address like 192.0.2.1:53")))?;
        let algorithm = match algorithm.to_ascii_lowercase().trim_end_matches('.') {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(config(format!("algorithm {other:?} is not one of hmac-sha256, hmac-sha384, hmac-sha512")));
            }
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|_| config("the TSIG secret is not base64".into()))?;
        let signer = TSigner::new(key, algorithm, name(key_name)?, 300)
            .map_err(|e| config(format!("the TSIG key cannot sign: {e}")))?;
        let zones = crate::zone_list("RFC2136", zones)?;
        Ok(Self { server, signer, zones, timeout })
    }

    async fn client(&self) -> Result<Client, DnsError> {
        let stream = UdpClientStream::builder(self.server, TokioRuntimeProvider::new())
            .with_timeout(Some(self.timeout))
            .with_signer(Some(Arc::new(self.signer.clone())))
            .build();
        let (client, background) = Client::connect(stream).await.map_err(|e| self.unreachable(e))?;
        tokio::spawn(background);
        Ok(client)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> DnsError {
        DnsError::Unreachable { provider: KIND, message: format!("{}: {e}", self.server) }
    }

    /// The server's answer as an error unless it is NOERROR; refusals of the key are
    /// `Unauthorized`.
    fn check(&self, answer: Result<DnsResponse, hickory_client::ClientError>) -> Result<DnsResponse, DnsError> {
        let answer = answer.map_err(|e| {
            // A server that cannot verify the signature answers without a usable one, which
            // the client then cannot verify either.
            let detail = format!("{e:?}");
            if detail.contains("TSIG") || detail.contains("tsig") || detail.contains("HMAC") {
                DnsError::Unauthorized {
                    provider: KIND,
                    message: format!(
                        "{} refused the TSIG signature (check keyName, algorithm and secret)",
                        self.server
                    ),
                }
            } else {
                self.unreachable(e)
            }
        })?;
        match answer.response_code() {
            ResponseCode::NoError => Ok(answer),
            code @ (ResponseCode::NotAuth | ResponseCode::Refused | ResponseCode::BADKEY | ResponseCode::BADSIG) => {
                Err(DnsError::Unauthorized { provider: KIND, message: format!("{} answered {code}", self.server) })
            }
            code => Err(DnsError::Provider {
                provider: KIND,
                status: u16::from(code),
                message: format!("{} answered {code}", self.server),
            }),
        }
    }

    fn txt_set(fqdn: &str, value: &str) -> Result<RecordSet, DnsError> {
        let record = Record::from_rdata(name(fqdn)?, TTL, RData::TXT(TXT::new(vec![value.to_owned()])));
        let mut set = RecordSet::new(record.name().clone(), RecordType::TXT, 0);
        set.insert(record, 0);
        Ok(set)
    }
}

#[async_trait]
impl DnsProvider for Rfc2136 {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn verify(&self) -> Result<(), DnsError> {
        // An update that changes nothing, its only prerequisite that the zone has its SOA:
        // the server checks the key and that it takes updates for the zone. (Queries are not
        // signed, so they would not tell a wrong secret.)
        let client = self.client().await?;
        for zone in &self.zones {
            let origin = name(zone)?;
            let mut section = Query::new();
            section.set_name(origin.clone()).set_query_class(DNSClass::IN).set_query_type(RecordType::SOA);
            let mut message = Message::new();
            message.set_id(fastrand::u16(..)).set_message_type(MessageType::Query).set_op_code(OpCode::Update);
            message.add_zone(section);
            let mut prerequisite = Record::update0(origin, 0, RecordType::SOA);
            prerequisite.set_dns_class(DNSClass::ANY);
            message.add_pre_requisite(prerequisite.into_record_of_rdata());
            let answer = client.send(DnsRequest::new(message, DnsRequestOptions::default())).next().await;
            let answer =
                answer.ok_or_else(|| self.unreachable("no answer"))?.map_err(hickory_client::ClientError::from);
            self.check(answer)?;
        }
        Ok(())
    }

    async fn zones(&self) -> Result<Vec<Zone>, DnsError> {
        Ok(self.zones.iter().map(|z| Zone { name: z.clone(), id: z.clone() }).collect())
    }

    async fn create_txt(&self, zone: &Zone, fqdn: &str, value: &str) -> Result<RecordId, DnsError> {
        let mut client = self.client().await?;
        self.check(client.append(Self::txt_set(fqdn, value)?, name(&zone.name)?, false).await)?;
        Ok(RecordId(format!("{fqdn}\n{value}")))
    }

    async fn delete(&self, zone: &Zone, id: &RecordId) -> Result<(), DnsError> {
        let (fqdn, value) =
            id.0.split_once('\n').ok_or_else(|| DnsError::Config(format!("{id} is not an RFC 2136 record id")))?;
        let mut client = self.client().await?;
        self.check(client.delete_by_rdata(Self::txt_set(fqdn, value)?, name(&zone.name)?).await)?;
        Ok(())
    }
}
