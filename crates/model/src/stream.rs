//! A stream: a listening port whose connections are forwarded, bytes as they are, to targets
//! (Nginx Proxy Manager's "streams"): `{listen, protocol, targets, balance, allow, deny,
//! proxyProtocol}`, the API's JSON and the store's fields alike.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::access::parse_nets;
use crate::body::FieldError;
use crate::host::Fields;
use crate::record::Stamps;
use crate::upstream::{Balance, CheckTiming, Upstream, parse_targets};

/// How a stream's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP connections.
    Tcp,
    /// UDP datagrams: each client address is a session with a target of its own.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A forwarded port.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Where it listens.
    pub listen: SocketAddr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Where its connections go (1 to 64).
    pub targets: Vec<Upstream>,
    /// How connections are shared among the targets.
    pub balance: Balance,
    /// Only these clients (addresses or networks) may connect; empty: anyone.
    pub allow: Vec<IpNet>,
    /// These may not (deny wins).
    pub deny: Vec<IpNet>,
    /// A PROXY protocol (v1) header naming the client starts each connection to a target.
    pub proxy_protocol: bool,
    /// Active checks of its targets (TCP streams): a connection made is a pass.
    pub health_check: Option<CheckTiming>,
    /// Who made and last changed it, and when.
    pub stamps: Stamps,
}

impl Stream {
    /// A new stream from the API's fields (`listen` and `targets` required), made by `by` at
    /// `now_ms`; every field at fault reported.
    pub fn from_json(body: &Map<String, Value>, by: &str, now_ms: i64) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        for key in ["listen", "targets"] {
            if body.get(key).is_none_or(Value::is_null) {
                errors.push(FieldError::Missing(key));
            }
        }
        let mut stream = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            protocol: Protocol::Tcp,
            targets: Vec::new(),
            balance: Balance::default(),
            allow: Vec::new(),
            deny: Vec::new(),
            proxy_protocol: false,
            health_check: None,
            stamps: Stamps::new(by, now_ms),
        };
        if !errors.is_empty() {
            // Still check what was given, so that every fault shows at once.
            let _ = stream.apply_json(body).map_err(|more| errors.extend(more));
            return Err(errors);
        }
        stream.apply_json(body)?;
        Ok(stream)
    }

    /// Applies an update's fields (only those given change).
    pub fn apply_json(&mut self, body: &Map<String, Value>) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut put = |result: Result<(), FieldError>| {
            if let Err(e) = result {
                errors.push(e);
            }
        };
        if let Some(listen) = body.get("listen").filter(|v| !v.is_null()) {
            put(parse_listen(listen).map(|l| self.listen = l));
        }
        if let Some(protocol) = body.get("protocol").filter(|v| !v.is_null()) {
            put(parse_protocol(protocol).map(|p| self.protocol = p));
        }
        if let Some(targets) = body.get("targets").filter(|v| !v.is_null()) {
            put(parse_targets(targets).map(|t| self.targets = t));
        }
        if let Some(balance) = body.get("balance").filter(|v| !v.is_null()) {
            put(Balance::parse(balance.as_str().unwrap_or_default()).map(|b| self.balance = b));
        }
        for (field, slot) in [("allow", &mut self.allow), ("deny", &mut self.deny)] {
            if let Some(list) = body.get(field) {
                put(parse_nets(field, list).map(|nets| *slot = nets));
            }
        }
        match body.get("proxyProtocol") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(on)) => self.proxy_protocol = *on,
            Some(_) => errors.push(FieldError::invalid("proxyProtocol", "must be true or false")),
        }
        match body.get("healthCheck") {
            None => {}
            Some(Value::Null) => self.health_check = None,
            Some(Value::Object(check)) => match CheckTiming::parse(check) {
                Ok(timing) => self.health_check = Some(timing),
                Err(e) => errors.push(e),
            },
            Some(_) => {
                errors.push(FieldError::invalid("healthCheck", "must be an object {interval, unhealthy, healthy}"))
            }
        }
        if errors.is_empty() && self.health_check.is_some() && self.protocol == Protocol::Udp {
            errors.push(FieldError::refused(
                "healthCheck",
                "a UDP target has no answer every service gives to check: its health is passive only (an ICMP \
                 refusal passes it over)",
            ));
        }
        if errors.is_empty() && self.proxy_protocol && self.protocol == Protocol::Udp {
            errors.push(FieldError::refused(
                "proxyProtocol",
                "the PROXY protocol header goes at the start of a TCP connection: a UDP stream has none",
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Reads a stored stream.
    pub fn from_fields(fields: &Fields) -> Result<Self, FieldError> {
        let json = |name: &'static str| -> Result<Value, FieldError> {
            let text = fields.get(name).ok_or(FieldError::Missing(name))?;
            serde_json::from_str(text).map_err(|_| FieldError::invalid(name, "is not JSON"))
        };
        let text = |name: &'static str| fields.get(name).cloned().unwrap_or_default();
        Ok(Self {
            listen: parse_listen(&Value::String(text("listen")))?,
            protocol: parse_protocol(&Value::String(text("protocol")))?,
            targets: parse_targets(&json("targets")?)?,
            balance: fields.get("balance").map_or(Ok(Balance::default()), |b| Balance::parse(b))?,
            allow: fields.get("allow").map_or(Ok(Vec::new()), |_| parse_nets("allow", &json("allow")?))?,
            deny: fields.get("deny").map_or(Ok(Vec::new()), |_| parse_nets("deny", &json("deny")?))?,
            proxy_protocol: fields.get("proxyProtocol").is_some_and(|v| v == "true"),
            health_check: match fields.get("healthCheck") {
                Some(_) => match json("healthCheck")? {
                    Value::Object(check) => Some(CheckTiming::parse(&check)?),
                    _ => return Err(FieldError::invalid("healthCheck", "is not an object")),
                },
                None => None,
            },
            stamps: Stamps::read(fields),
        })
    }

    /// The fields to store.
    pub fn to_fields(&self) -> Fields {
        let nets = |list: &[IpNet]| Value::Array(list.iter().map(|n| json!(n.to_string())).collect()).to_string();
        let targets: Vec<Value> = self.targets.iter().map(Upstream::to_json).collect();
        let mut fields: Fields = [
            ("listen", self.listen.to_string()),
            ("protocol", self.protocol.as_str().to_owned()),
            ("targets", Value::Array(targets).to_string()),
            ("balance", self.balance.as_str().to_owned()),
            ("allow", nets(&self.allow)),
            ("deny", nets(&self.deny)),
            ("proxyProtocol", self.proxy_protocol.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(check) = &self.health_check {
            fields.insert("healthCheck".to_owned(), check.to_json().to_string());
        }
        fields.extend(self.stamps.fields().map(|(k, v)| (k.to_owned(), v)));
        fields
    }

    /// The API's view of the stream `id`.
    pub fn view(&self, id: &str) -> Value {
        let nets = |list: &[IpNet]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        json!({
            "id": id,
            "listen": self.listen.to_string(),
            "protocol": self.protocol.as_str(),
            "targets": self.targets.iter().map(Upstream::to_json).collect::<Vec<_>>(),
            "balance": self.balance.as_str(),
            "allow": nets(&self.allow),
            "deny": nets(&self.deny),
            "proxyProtocol": self.proxy_protocol,
            "healthCheck": self.health_check.as_ref().map(CheckTiming::to_json),
            "created_by": self.stamps.created_by,
            "created_on": self.stamps.created_on,
            "updated_by": self.stamps.updated_by,
            "updated_on": self.stamps.updated_on,
        })
    }

    /// Whether `client` may connect: not denied, and allowed when there is an allow list.
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        crate::access::admits(&self.allow, &self.deny, client)
    }
}

fn parse_listen(value: &Value) -> Result<SocketAddr, FieldError> {
    let bad = || FieldError::invalid("listen", "must be an address and port such as 127.0.0.1:5432 or [::]:5432");
    let text = value.as_str().ok_or_else(bad)?;
    let addr: SocketAddr = text.trim().parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(FieldError::invalid("listen", "needs a port (1 to 65535)"));
    }
    Ok(addr)
}

fn parse_protocol(value: &Value) -> Result<Protocol, FieldError> {
    match value.as_str() {
        Some("tcp") => Ok(Protocol::Tcp),
        Some("udp") => Ok(Protocol::Udp),
        _ => Err(FieldError::invalid("protocol", "must be tcp or udp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn streams_from_json_and_fields() {
        let stream = Stream::from_json(
            &body(json!({"listen": "127.0.0.1:5432", "targets": [{"ip": "10.0.0.1", "port": 5432}],
                         "allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"], "proxyProtocol": true})),
            "ann",
            5,
        )
        .unwrap();
        assert_eq!(Stream::from_fields(&stream.to_fields()).unwrap(), stream, "round trip");
        assert!(stream.admits("10.1.2.3".parse().unwrap()));
        assert!(!stream.admits("10.9.2.3".parse().unwrap()), "deny wins");
        assert!(!stream.admits("192.0.2.1".parse().unwrap()), "not allowed");
        let errors =
            Stream::from_json(&body(json!({"listen": "nowhere", "protocol": "sctp", "proxyProtocol": 1})), "ann", 5)
                .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        for field in ["targets", "listen", "protocol", "proxyProtocol"] {
            assert!(fields.contains(&field), "{field}: {errors:?}");
        }
        assert!(Stream::from_json(&body(json!({"listen": "127.0.0.1:0", "targets": []})), "ann", 5).is_err());
        let udp = json!({"listen": "127.0.0.1:53", "protocol": "udp", "targets": [{"ip": "10.0.0.1", "port": 53}]});
        let udp = Stream::from_json(&body(udp), "ann", 5).unwrap();
        assert_eq!(Stream::from_fields(&udp.to_fields()).unwrap(), udp, "a UDP stream's round trip");
        assert_eq!(udp.view("x")["protocol"], "udp");
        let header = Stream::from_json(
            &body(json!({"listen": "127.0.0.1:53", "protocol": "udp", "targets": [{"ip": "10.0.0.1", "port": 53}],
                         "proxyProtocol": true})),
            "ann",
            5,
        )
        .unwrap_err();
        assert_eq!(header[0].field(), "proxyProtocol", "no PROXY header over UDP");
        let checked = Stream::from_json(
            &body(json!({"listen": "127.0.0.1:5432", "targets": [{"ip": "10.0.0.1", "port": 5432}],
                         "healthCheck": {"interval": "2s", "unhealthy": 1}})),
            "ann",
            5,
        )
        .unwrap();
        assert_eq!(checked.health_check.map(|c| (c.interval.as_secs(), c.unhealthy, c.healthy)), Some((2, 1, 2)));
        assert_eq!(Stream::from_fields(&checked.to_fields()).unwrap(), checked, "a checked stream's round trip");
        let udp_checked = json!({"listen": "127.0.0.1:53", "protocol": "udp", "targets": [{"ip": "10.0.0.1", "port": 53}],
                                 "healthCheck": {}});
        assert_eq!(Stream::from_json(&body(udp_checked), "ann", 5).unwrap_err()[0].field(), "healthCheck");
    }
}
