//! Envoy's foreign functions (`proxy_call_foreign_function`), with Envoy 1.40's argument and
//! result encodings and statuses (Envoy's `source/extensions/common/wasm/foreign.cc`): zlib
//! `compress` / `uncompress`, `clear_route_cache`, `declare_property`, `set_envoy_filter_state`,
//! CEL expressions (`expr_create`, `expr_evaluate`, `expr_delete`) over the attributes
//! `proxy_get_property` reads, and `verify_signature` / `sign`.

mod signature;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use prost::Message;
use sluice_abi::{Attribute, Status};

use crate::imports::top_level;
use crate::state::HostState;
use crate::stream::{FilterStateEntry, WRAPPERS};

/// The foreign functions sluice offers; any other name is unknown (`NOT_FOUND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Function {
    Compress,
    Uncompress,
    ClearRouteCache,
    DeclareProperty,
    SetEnvoyFilterState,
    ExprCreate,
    ExprEvaluate,
    ExprDelete,
    VerifySignature,
    Sign,
    /// Higress's: the plugin's log level, as `proxy_get_log_level` gives it.
    GetLogLevel,
    /// Higress's: how many requests Envoy reads per I/O cycle, across the process.
    SetGlobalMaxRequestsPerIoCycle,
}

/// What `declare_property` said about a property: set once, and a string (else bytes) to CEL.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Declared {
    pub readonly: bool,
    pub string: bool,
}

/// A root context's compiled expressions, by token (Envoy counts tokens from 0 per root).
#[derive(Default)]
pub(crate) struct Expressions {
    next: u32,
    programs: HashMap<u32, cel::Program>,
}

/// `envoy.source.extensions.common.wasm.DeclarePropertyArguments`.
#[derive(Clone, PartialEq, Message)]
struct DeclarePropertyArguments {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bool, tag = "2")]
    readonly: bool,
    /// `WasmType`: 0 bytes, 1 string, 2 flatbuffers, 3 protobuf.
    #[prost(int32, tag = "3")]
    r#type: i32,
    #[prost(bytes = "vec", tag = "4")]
    schema: Vec<u8>,
    #[prost(int32, tag = "5")]
    span: i32,
}

/// `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`.
#[derive(Clone, PartialEq, Message)]
struct SetEnvoyFilterStateArguments {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(int32, tag = "3")]
    span: i32,
}

impl Function {
    pub(crate) fn named(name: &[u8]) -> Option<Function> {
        Some(match name {
            b"compress" => Function::Compress,
            b"uncompress" => Function::Uncompress,
            b"clear_route_cache" => Function::ClearRouteCache,
            b"declare_property" => Function::DeclareProperty,
            b"set_envoy_filter_state" => Function::SetEnvoyFilterState,
            b"expr_create" => Function::ExprCreate,
            b"expr_evaluate" => Function::ExprEvaluate,
            b"expr_delete" => Function::ExprDelete,
            b"verify_signature" => Function::VerifySignature,
            b"sign" => Function::Sign,
            b"get_log_level" => Function::GetLogLevel,
            b"set_global_max_requests_per_io_cycle" => Function::SetGlobalMaxRequestsPerIoCycle,
            _ => return None,
        })
    }

    /// Runs the function for the effective context; the bytes are its result.
    pub(crate) fn call(self, state: &mut HostState, arguments: &[u8]) -> Result<Vec<u8>, Status> {
        match self {
            Function::Compress => compress(arguments),
            Function::Uncompress => uncompress(arguments, state.limiter.max_bytes),
            // Sluice routes every request by the head the plugins leave, so there is no cached
            // route to clear: the next routing (before the request goes upstream) sees the
            // headers as they are then, as Envoy's does after this call.
            Function::ClearRouteCache => Ok(Vec::new()),
            Function::DeclareProperty => declare_property(state, arguments),
            Function::SetEnvoyFilterState => set_envoy_filter_state(state, arguments),
            Function::ExprCreate => expr_create(state, arguments),
            Function::ExprEvaluate => expr_evaluate(state, arguments),
            Function::VerifySignature => signature::verify_signature(arguments),
            Function::Sign => signature::sign(arguments),
            // A 4-byte little-endian level (0 trace .. 5 critical), as Higress's host answers.
            Function::GetLogLevel => Ok(state
                .log_level
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes()
                .to_vec()),
            // An 8-byte little-endian count. It tunes how Envoy's HTTP/1 codec batches reads on
            // one connection; sluice's server has no such knob, so a well-formed call is
            // accepted and changes nothing.
            Function::SetGlobalMaxRequestsPerIoCycle => match arguments.len() {
                8 => Ok(Vec::new()),
                _ => Err(Status::BadArgument),
            },
            Function::ExprDelete => {
                let token = token(arguments)?;
                if let Some(expressions) = state.expressions.get_mut(&state.effective_root()) {
                    expressions.programs.remove(&token);
                }
                Ok(Vec::new())
            }
        }
    }
}

/// zlib's `compress()` (a zlib stream at the default level).
fn compress(arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(arguments)
        .and_then(|()| encoder.finish())
        .map_err(|_| Status::SerializationFailure)
}

/// zlib's `uncompress()`: a whole zlib stream, else `SERIALIZATION_FAILURE`. Envoy grows its
/// buffer without bound; sluice stops at the plugin's memory limit, which the result could not
/// fit in anyway.
fn uncompress(arguments: &[u8], limit: usize) -> Result<Vec<u8>, Status> {
    let mut decoder = flate2::read::ZlibDecoder::new(arguments);
    let mut out = Vec::new();
    let read = (&mut decoder)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Status::SerializationFailure)?;
    if read > limit || decoder.total_in() != arguments.len() as u64 {
        return Err(Status::SerializationFailure);
    }
    Ok(out)
}

/// The properties one context may declare.
const MAX_DECLARED_PROPERTIES: usize = 1024;

/// Declares a property on the calling context: its type (string or bytes to CEL) and whether
/// it can be set once only. A stream's properties follow its root context's declarations.
fn declare_property(state: &mut HostState, arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let arguments = DeclarePropertyArguments::decode(arguments).map_err(|_| Status::BadArgument)?;
    let declared = state.declared.entry(state.effective_context).or_default();
    if declared.contains_key(&arguments.name) {
        return Err(Status::BadArgument);
    }
    // Envoy has no bound; a plugin declaring a new name per request would grow its VM for good.
    if declared.len() >= MAX_DECLARED_PROPERTIES {
        return Err(Status::InternalFailure);
    }
    declared.insert(
        arguments.name,
        Declared {
            readonly: arguments.readonly,
            string: arguments.r#type == 1,
        },
    );
    Ok(Vec::new())
}

/// A property value as its declared type reads in CEL.
pub(crate) fn typed(value: Vec<u8>, string: bool) -> Attribute {
    if string {
        match String::from_utf8(value) {
            Ok(text) => Attribute::String(text),
            Err(error) => Attribute::Bytes(error.into_bytes()),
        }
    } else {
        Attribute::Bytes(value)
    }
}

/// Sets an object of Envoy's filter state of the stream, made by the factory its key names.
/// Sluice has the factories of plain values (`envoy.string`, `envoy.hashable_string`,
/// `envoy.bool`, `envoy.network.ip`) and tcp_proxy's `envoy.tcp_proxy.cluster` (the cluster a
/// TCP connection goes to, set before it connects); the others configure Envoy features sluice
/// does not have, and answer as an Envoy without that factory does (`NOT_FOUND`).
fn set_envoy_filter_state(state: &mut HostState, arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let arguments =
        SetEnvoyFilterStateArguments::decode(arguments).map_err(|_| Status::BadArgument)?;
    let stream = state.effective_stream().ok_or(Status::NotFound)?;
    let value = match arguments.path.as_str() {
        "envoy.string" | "envoy.hashable_string" | TCP_PROXY_CLUSTER => arguments.value,
        "envoy.bool" => match arguments.value.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => "true".into(),
            "false" | "f" | "no" | "n" | "0" => "false".into(),
            _ => return Err(Status::BadArgument),
        },
        "envoy.network.ip" => arguments
            .value
            .parse::<std::net::IpAddr>()
            .map_err(|_| Status::BadArgument)?
            .to_string(),
        _ => return Err(Status::NotFound),
    };
    stream
        .try_borrow_mut()
        .map_err(|_| Status::NotFound)?
        .filter_state
        .insert(
            arguments.path,
            FilterStateEntry {
                value: Attribute::String(value),
                readonly: false,
            },
        );
    Ok(Vec::new())
}

/// The filter-state key whose value names the cluster of a TCP connection (Envoy's
/// `PerConnectionCluster`).
pub const TCP_PROXY_CLUSTER: &str = "envoy.tcp_proxy.cluster";

fn token(arguments: &[u8]) -> Result<u32, Status> {
    let bytes: [u8; 4] = arguments.try_into().map_err(|_| Status::BadArgument)?;
    Ok(u32::from_le_bytes(bytes))
}

/// How many compiled expressions a root context may keep. Envoy has no bound; a plugin that
/// creates an expression per request and never deletes it would grow the proxy's memory
/// without end.
const MAX_EXPRESSIONS: usize = 4096;

/// How deeply comprehensions (`all`, `exists`, `map`, `filter`) may nest in an expression. One
/// level is linear in the data; each nesting multiplies, and host code is not cut off at the
/// plugin's deadline as guest code is.
const MAX_COMPREHENSION_NESTING: usize = 1;

/// Compiles a CEL expression for the calling root context; the result is its token (4 bytes,
/// little-endian). A syntax error, or comprehensions nested deeper than
/// [`MAX_COMPREHENSION_NESTING`], is `BAD_ARGUMENT`.
fn expr_create(state: &mut HostState, arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let text = std::str::from_utf8(arguments).map_err(|_| Status::BadArgument)?;
    let compiled = std::panic::catch_unwind(|| cel::Program::compile(text));
    let program = match compiled {
        Ok(Ok(program)) => program,
        Ok(Err(error)) => {
            tracing::debug!(plugin = %state.plugin_name, "expr_create parse error: {error}");
            return Err(Status::BadArgument);
        }
        Err(_) => return Err(Status::BadArgument),
    };
    if comprehension_nesting(program.expression()) > MAX_COMPREHENSION_NESTING {
        tracing::debug!(plugin = %state.plugin_name, "expr_create: comprehensions nest deeper than {MAX_COMPREHENSION_NESTING}");
        return Err(Status::BadArgument);
    }
    let expressions = state.expressions.entry(state.effective_root()).or_default();
    if expressions.programs.len() >= MAX_EXPRESSIONS {
        tracing::warn!(plugin = %state.plugin_name, "expr_create: {MAX_EXPRESSIONS} expressions exist already; delete some with expr_delete");
        return Err(Status::InternalFailure);
    }
    let mut token = expressions.next;
    while expressions.programs.contains_key(&token) {
        token = token.wrapping_add(1);
    }
    expressions.next = token.wrapping_add(1);
    expressions.programs.insert(token, program);
    Ok(token.to_le_bytes().to_vec())
}

fn comprehension_nesting(expression: &cel::IdedExpr) -> usize {
    use cel::common::ast::Expr;
    let deepest = |children: &mut dyn Iterator<Item = &cel::IdedExpr>| {
        children.map(comprehension_nesting).max().unwrap_or(0)
    };
    match &expression.expr {
        Expr::Comprehension(c) => {
            let inside = deepest(&mut [&c.loop_cond, &c.loop_step, &c.result].into_iter());
            let outside = deepest(&mut [&c.iter_range, &c.accu_init].into_iter());
            (inside + 1).max(outside)
        }
        Expr::Call(call) => deepest(&mut call.target.as_deref().into_iter().chain(&call.args)),
        Expr::List(list) => deepest(&mut list.elements.iter()),
        Expr::Select(select) => comprehension_nesting(&select.operand),
        Expr::Map(map) => deepest(&mut map.entries.iter().flat_map(|e| entry_children(&e.expr))),
        Expr::Struct(fields) => {
            deepest(&mut fields.entries.iter().flat_map(|e| entry_children(&e.expr)))
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => 0,
    }
}

fn entry_children(entry: &cel::common::ast::EntryExpr) -> Vec<&cel::IdedExpr> {
    match entry {
        cel::common::ast::EntryExpr::StructField(field) => vec![&field.value],
        cel::common::ast::EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
    }
}

/// Evaluates an expression of the calling root context against the effective context's
/// attributes, and returns the value in `proxy_get_property`'s encoding. A wrong-sized token is
/// `BAD_ARGUMENT`, an unknown one `NOT_FOUND`, an evaluation error `INTERNAL_FAILURE`, a value
/// that has no encoding (null) `SERIALIZATION_FAILURE`.
fn expr_evaluate(state: &mut HostState, arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let token = token(arguments)?;
    let program = state
        .expressions
        .get(&state.effective_root())
        .and_then(|e| e.programs.get(&token))
        .ok_or(Status::NotFound)?;
    let mut context = cel::Context::default();
    for name in program.references().variables() {
        if let Some(mut value) = top_level(state, name) {
            if WRAPPERS.contains(&name)
                && let Attribute::Map(entries) = &mut value
            {
                entries.push((Attribute::String(WRAPPER_KEY.into()), Attribute::Null));
            }
            context.add_variable_from_value(name, to_cel(value));
        }
    }
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&context)));
    match result {
        Ok(Ok(value)) => from_cel(&value)?.serialize(),
        Ok(Err(error)) => {
            tracing::debug!(plugin = %state.plugin_name, "expr_evaluate error: {error}");
            Err(Status::InternalFailure)
        }
        Err(_) => Err(Status::InternalFailure),
    }
}

/// The map key that carries a message's serialization through CEL, which knows the message as a
/// map of its fields. No CEL source can name it.
const MESSAGE_KEY: &str = "\0serialized";

/// The map key that marks one of Envoy's [`WRAPPERS`], which serializes as a failure.
const WRAPPER_KEY: &str = "\0wrapper";

fn key(text: &str) -> cel::objects::Key {
    cel::objects::Key::String(Arc::new(text.into()))
}

fn to_cel(value: Attribute) -> cel::Value {
    use cel::Value;
    match value {
        Attribute::Null => Value::Null,
        Attribute::Bool(b) => Value::Bool(b),
        Attribute::Int(i) => Value::Int(i),
        Attribute::UInt(u) => Value::UInt(u),
        Attribute::Double(d) => Value::Float(d),
        Attribute::String(s) => Value::String(Arc::new(s)),
        Attribute::Bytes(b) => Value::Bytes(Arc::new(b)),
        Attribute::List(items) => Value::List(Arc::new(items.into_iter().map(to_cel).collect())),
        Attribute::Map(entries) => {
            let mut map: HashMap<cel::objects::Key, Value> = HashMap::new();
            for (key, value) in entries {
                let key = match key {
                    Attribute::String(s) => cel::objects::Key::String(Arc::new(s)),
                    Attribute::Int(i) => cel::objects::Key::Int(i),
                    Attribute::UInt(u) => cel::objects::Key::Uint(u),
                    Attribute::Bool(b) => cel::objects::Key::Bool(b),
                    _ => continue,
                };
                // A header map's repeated names read as one entry, the values joined as Envoy
                // joins them.
                match (map.get_mut(&key), to_cel(value)) {
                    (Some(Value::String(first)), Value::String(next)) => {
                        *first = Arc::new(format!("{first},{next}"));
                    }
                    (_, value) => {
                        map.insert(key, value);
                    }
                }
            }
            Value::from(map)
        }
        Attribute::Message { serialized, fields } => {
            let mut map: HashMap<cel::objects::Key, Value> = fields
                .into_iter()
                .map(|(k, v)| {
                    (
                        cel::objects::Key::String(Arc::new(k.to_string())),
                        to_cel(v),
                    )
                })
                .collect();
            map.insert(
                cel::objects::Key::String(Arc::new(MESSAGE_KEY.into())),
                Value::Bytes(Arc::new(serialized)),
            );
            Value::from(map)
        }
    }
}

/// A CEL result as an attribute: durations and timestamps as nanoseconds, map entries in key
/// order (CEL maps have none; Envoy's is its hash order).
fn from_cel(value: &cel::Value) -> Result<Attribute, Status> {
    use cel::Value;
    Ok(match value {
        Value::Null => Attribute::Null,
        Value::Bool(b) => Attribute::Bool(*b),
        Value::Int(i) => Attribute::Int(*i),
        Value::UInt(u) => Attribute::UInt(*u),
        Value::Float(d) => Attribute::Double(*d),
        Value::String(s) => Attribute::String(s.to_string()),
        Value::Bytes(b) => Attribute::Bytes(b.to_vec()),
        Value::Duration(d) => {
            Attribute::Int(d.num_nanoseconds().ok_or(Status::SerializationFailure)?)
        }
        Value::Timestamp(t) => Attribute::Int(
            t.timestamp_nanos_opt()
                .ok_or(Status::SerializationFailure)?,
        ),
        Value::List(items) => {
            Attribute::List(items.iter().map(from_cel).collect::<Result<_, _>>()?)
        }
        Value::Map(map) => {
            if map.map.contains_key(&key(WRAPPER_KEY)) {
                return Err(Status::SerializationFailure);
            }
            if let Some(Value::Bytes(serialized)) = map.map.get(&key(MESSAGE_KEY)) {
                return Ok(Attribute::Message {
                    serialized: serialized.to_vec(),
                    fields: Vec::new(),
                });
            }
            let mut entries = map
                .map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel::objects::Key::String(s) => Attribute::String(s.to_string()),
                        cel::objects::Key::Int(i) => Attribute::Int(*i),
                        cel::objects::Key::Uint(u) => Attribute::UInt(*u),
                        cel::objects::Key::Bool(b) => Attribute::Bool(*b),
                    };
                    Ok((key, from_cel(v)?))
                })
                .collect::<Result<Vec<_>, Status>>()?;
            entries.sort_by_key(|(k, _)| k.serialize().unwrap_or_default());
            Attribute::Map(entries)
        }
        _ => return Err(Status::SerializationFailure),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what Envoy 1.40 (zlib) answered for the same arguments.
    #[test]
    fn zlib_as_envoy_does_it() {
        assert_eq!(
            compress(b"hello hello hello").unwrap(),
            b"x\x9c\xcbH\xcd\xc9\xc9W\xc8@\x90\x00:.\x06}"
        );
        assert_eq!(compress(b"").unwrap(), b"x\x9c\x03\x00\x00\x00\x00\x01");
        let packed = compress(b"hello").unwrap();
        assert_eq!(uncompress(&packed, 1 << 20).unwrap(), b"hello");
        assert_eq!(
            uncompress(b"\x00\x11\x22\x33\x44", 1 << 20),
            Err(Status::SerializationFailure)
        );
        assert_eq!(uncompress(b"", 1 << 20), Err(Status::SerializationFailure));
        assert_eq!(
            uncompress(&packed[..packed.len() - 2], 1 << 20),
            Err(Status::SerializationFailure)
        );
        let big = compress(&vec![b'a'; 1 << 16]).unwrap();
        assert_eq!(
            uncompress(&big, 1 << 10),
            Err(Status::SerializationFailure),
            "bounded"
        );
    }

    #[test]
    fn nested_comprehensions_are_refused() {
        let nesting =
            |text: &str| comprehension_nesting(cel::Program::compile(text).unwrap().expression());
        assert_eq!(nesting("1 + 2"), 0);
        assert_eq!(nesting("[1, 2].all(x, x > 0)"), 1);
        assert_eq!(nesting("[1, 2].map(x, x * 2).filter(y, y > 2)"), 1);
        assert_eq!(nesting("[1, 2].all(x, [3].exists(y, y > x))"), 2);
        assert_eq!(nesting("{'a': [1].map(x, [2].map(y, y))}"), 2);
    }

    #[test]
    fn cel_values_serialize_as_envoy_does() {
        let eval = |text: &str| {
            let program = cel::Program::compile(text).unwrap();
            from_cel(&program.execute(&cel::Context::default()).unwrap())?.serialize()
        };
        assert_eq!(eval("1 + 2").unwrap(), 3i64.to_le_bytes());
        assert_eq!(eval("3u").unwrap(), 3u64.to_le_bytes());
        assert_eq!(eval("1.5").unwrap(), 1.5f64.to_le_bytes());
        assert_eq!(eval("'abc'.startsWith('a')").unwrap(), b"\x01");
        assert_eq!(eval("b'abc'").unwrap(), b"abc");
        assert_eq!(eval("null"), Err(Status::SerializationFailure));
        assert_eq!(
            eval("duration('1.5s')").unwrap(),
            1_500_000_000i64.to_le_bytes()
        );
        assert_eq!(
            eval("timestamp('2020-01-01T00:00:00Z')").unwrap(),
            1_577_836_800_000_000_000i64.to_le_bytes()
        );
        assert_eq!(
            eval("{'a': 1, 'b': 'x'}").unwrap(),
            b"\x02\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00a\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00b\x00x\x00"
        );
        assert_eq!(
            eval("[1, 'two']").unwrap(),
            b"\x02\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00two\x00\x00"
        );
    }
}
