//! What a `FlightDescriptor.cmd` or a `Ticket` carries, decoded once.
//!
//! # Wire format
//!
//! The bytes are tried in this order:
//!
//! 1. **JSON**: the first non-blank byte is `{`. A UTF-8 JSON object with the
//!    fields of `Query` (GetFlightInfo, GetSchema, DoGet) or `IngestRequest`
//!    (DoPut), as `docs/protocol.md` gives them. Which one is decided by the
//!    RPC ([`Expect`]).
//! 2. **`google.protobuf.Any`** whose `type_url` is one of ours:
//!    [`QUERY_TYPE_URL`] or [`INGEST_TYPE_URL`], with the protobuf message
//!    of `proto/` in `value`. A message of the other kind than the RPC takes
//!    is refused naming both.
//! 3. **Flight SQL**: an `Any` whose `type_url` starts with
//!    [`FLIGHT_SQL_TYPE_PREFIX`] (`CommandStatementQuery`,
//!    `CommandGetTables`, a prepared statement's handle, ...). Recognised so
//!    that it is never misread as one of our messages; the Flight SQL room
//!    answers it.
//! 4. **Bare protobuf**: `Query` or `IngestRequest` without an envelope, as
//!    the first clients sent them (still accepted).
//!
//! An endpoint ticket that GetFlightInfo hands out is a JSON `Query`
//! narrowed to one chunk (one tile, one band, one month), so a ticket can be
//! read, logged and rebuilt by hand; it decodes as a [`Command::Query`].
//!
//! An `Any` is told apart from a bare message by its `type_url`: field 1 of
//! both bare messages is a collection name (`[a-z0-9_]`), which never holds
//! the `/` every type URL has.

use pixelquery_proto::v1 as pb;
use prost::Message;

use super::{ingest_spec, is_json, query_spec, IngestJson, IngestSpec, QueryJson, QuerySpec};
use crate::error::{Error, Result};

/// Type URL of a `pixelquery.v1.Query` in an `Any`.
pub const QUERY_TYPE_URL: &str = "type.googleapis.com/pixelquery.v1.Query";
/// Type URL of a `pixelquery.v1.IngestRequest` in an `Any`.
pub const INGEST_TYPE_URL: &str = "type.googleapis.com/pixelquery.v1.IngestRequest";
/// Type URLs of Flight SQL commands start with this.
pub const FLIGHT_SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// What the RPC takes: it decides how JSON and bare protobuf are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// GetFlightInfo, GetSchema, DoGet.
    Query,
    /// DoPut.
    Ingest,
}

/// A decoded command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A query: chunks of tiles, or a point series.
    Query(Box<QuerySpec>),
    /// One raster to ingest.
    Ingest(IngestSpec),
    /// A Flight SQL command, by its message name (`CommandStatementQuery`).
    FlightSql { command: String, body: bytes::Bytes },
}

impl Command {
    /// Decodes `bytes` (the descriptor's `cmd` or the ticket, named `field`
    /// in errors) for an RPC that takes `expect`.
    pub fn decode(field: &str, bytes: &[u8], expect: Expect) -> Result<Command> {
        if !is_json(bytes) {
            if let Some(any) = envelope(bytes) {
                return Self::from_any(field, any, expect);
            }
        }
        match expect {
            Expect::Query => Ok(Command::Query(Box::new(query_spec(super::decode::<_, QueryJson>(field, bytes)?)?))),
            Expect::Ingest => Ok(Command::Ingest(ingest_spec(super::decode::<_, IngestJson>(field, bytes)?)?)),
        }
    }

    fn from_any(field: &str, any: prost_types::Any, expect: Expect) -> Result<Command> {
        let malformed = |e: prost::DecodeError| Error::invalid(field, &any.type_url, &format!("malformed protobuf in the Any's value: {e}"));
        let command = match any.type_url.as_str() {
            QUERY_TYPE_URL => Command::Query(Box::new(query_spec(pb::Query::decode(any.value.as_slice()).map_err(malformed)?)?)),
            INGEST_TYPE_URL => Command::Ingest(ingest_spec(pb::IngestRequest::decode(any.value.as_slice()).map_err(malformed)?)?),
            url => match url.strip_prefix(FLIGHT_SQL_TYPE_PREFIX) {
                Some(name) => return Ok(Command::FlightSql { command: name.to_string(), body: any.value.into() }),
                None => {
                    return Err(Error::invalid(
                        &format!("{field}.type_url"),
                        url,
                        &format!("unknown command type; expected {QUERY_TYPE_URL}, {INGEST_TYPE_URL} or a Flight SQL command"),
                    ))
                }
            },
        };
        match (&command, expect) {
            (Command::Query(_), Expect::Query) | (Command::Ingest(_), Expect::Ingest) => Ok(command),
            _ => Err(Error::invalid(
                &format!("{field}.type_url"),
                &any.type_url,
                match expect {
                    Expect::Query => "this call takes a Query (GetFlightInfo, GetSchema, DoGet); an IngestRequest goes to DoPut",
                    Expect::Ingest => "DoPut takes an IngestRequest; a Query goes to GetFlightInfo or DoGet",
                },
            )),
        }
    }

    /// Wraps a `Query` in the `Any` envelope clients may send.
    pub fn query_any(query: &pb::Query) -> Vec<u8> {
        prost_types::Any { type_url: QUERY_TYPE_URL.into(), value: query.encode_to_vec() }.encode_to_vec()
    }
}

/// `bytes` as an `Any` envelope, if they are one: they decode as an `Any`
/// whose type URL has a `/` (a bare message's field 1 never does).
fn envelope(bytes: &[u8]) -> Option<prost_types::Any> {
    let any = prost_types::Any::decode(bytes).ok()?;
    any.type_url.contains('/').then_some(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Vec<u8> {
        prost_types::Any { type_url: type_url.into(), value }.encode_to_vec()
    }

    fn query() -> pb::Query {
        pb::Query { collection: "s2".into(), tiles: vec!["x0001_y0002".into()], ..Default::default() }
    }

    #[test]
    fn a_query_decodes_the_same_as_json_bare_protobuf_and_any() {
        let json = br#"{"collection": "s2", "tiles": ["x0001_y0002"]}"#;
        let from_json = Command::decode("ticket", json, Expect::Query).unwrap();
        let bare = Command::decode("ticket", &query().encode_to_vec(), Expect::Query).unwrap();
        let wrapped = Command::decode("ticket", &Command::query_any(&query()), Expect::Query).unwrap();
        assert!(matches!(from_json, Command::Query(_)));
        assert_eq!(from_json, bare);
        assert_eq!(from_json, wrapped);
    }

    #[test]
    fn flight_sql_commands_are_recognised_not_misread() {
        // CommandStatementQuery { query = "SELECT 1" }: field 1, a string.
        let statement = [&[0x0a, 8][..], b"SELECT 1"].concat();
        let got =
            Command::decode("descriptor.cmd", &any("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery", statement), Expect::Query).unwrap();
        assert!(matches!(&got, Command::FlightSql { command, .. } if command == "CommandStatementQuery"), "{got:?}");
    }

    #[test]
    fn a_message_of_the_other_kind_or_an_unknown_type_is_refused() {
        let e = Command::decode("descriptor.cmd", &Command::query_any(&query()), Expect::Ingest).unwrap_err();
        assert!(e.to_string().contains("DoPut takes an IngestRequest"), "{e}");
        let e = Command::decode("ticket", &any("type.googleapis.com/other.Thing", vec![]), Expect::Query).unwrap_err();
        assert!(e.to_string().contains("ticket.type_url") && e.to_string().contains("unknown command type"), "{e}");
    }
}
