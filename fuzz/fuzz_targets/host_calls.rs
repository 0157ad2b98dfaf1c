//! Sequences of host calls with arbitrary pointers, lengths and values, made by a real wasm
//! instance on the real host.
//!
//! The guest is generated once from the engine's own list of host functions: it imports every
//! one, and its `proxy_on_request_body` runs the request body as a program. Each step is one
//! byte choosing a function (modulo their number) followed by that function's arguments, little
//! endian, as many bytes as its parameters take. What the host must do whatever the program:
//! return, not panic, keep to the guest's memory, and leave the VM usable or failed (then the
//! next input gets a fresh one).

#![no_main]

use std::cell::RefCell;
use std::fmt::Write;

use libfuzzer_sys::fuzz_target;
use sluice_abi::{HeaderMap, LogLevel};
use sluice_host::{
    CallOp, Effect, Engine, EngineOptions, GrpcEvent, HostFunction, HttpStream, PluginCode, Vm,
    VmConfig, WasmType,
};

/// Where the guest keeps the program it runs (copied out of the body), and its largest size.
const PROGRAM_AT: u32 = 0x1000;
const PROGRAM_MAX: u32 = 0xF000;
/// The guest's allocator hands out memory from here to the end of its 64 pages.
const HEAP_AT: u32 = 0x2_0000;
const MEMORY_END: u32 = 64 * 65536;

fn wat_type(ty: WasmType) -> (&'static str, u32) {
    match ty {
        WasmType::I32 => ("i32", 4),
        WasmType::I64 => ("i64", 8),
        WasmType::F32 => ("f32", 4),
        WasmType::F64 => ("f64", 8),
    }
}

/// The guest: every host function imported, the program interpreter in the request body callback.
fn guest(functions: &[HostFunction]) -> String {
    let mut wat = String::from("(module\n");
    for (i, f) in functions.iter().enumerate() {
        let params: Vec<&str> = f.params.iter().map(|t| wat_type(*t).0).collect();
        let results: Vec<&str> = f.results.iter().map(|t| wat_type(*t).0).collect();
        let _ = writeln!(
            wat,
            "  (import \"{}\" \"{}\" (func $f{i} (param {}) (result {})))",
            f.module,
            f.name,
            params.join(" "),
            results.join(" ")
        );
    }
    let _ = write!(
        wat,
        r#"
  (memory (export "memory") 64 64)
  (global $heap (mut i32) (i32.const {HEAP_AT}))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (if (i32.gt_u (local.get $size) (i32.const 0x100000)) (then (return (i32.const 0))))
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $size)) (i32.const {MEMORY_END}))
      (then (global.set $heap (i32.const {HEAP_AT}))))
    (local.set $at (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $at) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
  (func (export "proxy_on_request_body") (param $context i32) (param $size i32) (param $end i32)
    (result i32)
    (local $pc i32) (local $stop i32) (local $op i32)
    ;; The body (the program) from the host, then into the program area.
    (i32.store (i32.const 0x100) (i32.const 0))
    (i32.store (i32.const 0x104) (i32.const 0))
    (drop (call $get_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size)
                                  (i32.const 0x100) (i32.const 0x104)))
    (local.set $size (i32.load (i32.const 0x104)))
    (if (i32.gt_u (local.get $size) (i32.const {PROGRAM_MAX}))
      (then (local.set $size (i32.const {PROGRAM_MAX}))))
    (memory.copy (i32.const {PROGRAM_AT}) (i32.load (i32.const 0x100)) (local.get $size))
    (local.set $pc (i32.const {PROGRAM_AT}))
    (local.set $stop (i32.add (i32.const {PROGRAM_AT}) (local.get $size)))
    (block $exit
      (loop $next
        (br_if $exit (i32.ge_u (local.get $pc) (local.get $stop)))
        (local.set $op (i32.rem_u (i32.load8_u (local.get $pc)) (i32.const {count})))
        (local.set $pc (i32.add (local.get $pc) (i32.const 1)))
"#,
        count = functions.len()
    );
    // Nested blocks, innermost first: `br_table` jumps to the end of block N, where function N's
    // call follows.
    for i in (0..functions.len()).rev() {
        let _ = writeln!(wat, "        (block $c{i}");
    }
    let targets: Vec<String> = (0..functions.len()).map(|i| format!("$c{i}")).collect();
    let _ = writeln!(
        wat,
        "          (br_table {} (local.get $op)))",
        targets.join(" ")
    );
    for (i, f) in functions.iter().enumerate() {
        let size: u32 = f.params.iter().map(|t| wat_type(*t).1).sum();
        let _ = writeln!(
            wat,
            "        (br_if $exit (i32.gt_u (i32.add (local.get $pc) (i32.const {size})) (local.get $stop)))"
        );
        let mut offset = 0;
        let mut args = String::new();
        for ty in &f.params {
            let (name, width) = wat_type(*ty);
            let _ = write!(
                args,
                " ({name}.load offset={offset} align=1 (local.get $pc))"
            );
            offset += width;
        }
        let _ = writeln!(wat, "        (call $f{i}{args})");
        for _ in &f.results {
            let _ = writeln!(wat, "        (drop)");
        }
        let _ = writeln!(
            wat,
            "        (local.set $pc (i32.add (local.get $pc) (i32.const {size})))\n        (br $next)"
        );
        if i + 1 < functions.len() {
            let _ = writeln!(wat, "        )");
        }
    }
    wat.push_str("      ))\n    (i32.const 0))\n");
    // The buffer read the interpreter needs, under its own name.
    let get_buffer = functions
        .iter()
        .position(|f| f.name == "proxy_get_buffer_bytes")
        .expect("the host provides proxy_get_buffer_bytes");
    let _ = writeln!(
        wat,
        "  (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)\n    (call $f{get_buffer} (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))\n)"
    );
    wat
}

struct Harness {
    engine: Engine,
    code: PluginCode,
    vm: Option<(Vm, u32)>,
}

impl Harness {
    fn new() -> Self {
        let engine = Engine::new(EngineOptions { cache_dir: None }).expect("an engine");
        // WASI's proc_exit would end every program that picks it; it is a trap the host turns into
        // a failure like any other, which the other traps already cover.
        let functions: Vec<HostFunction> = engine
            .host_functions()
            .into_iter()
            .filter(|f| f.name != "proc_exit")
            .collect();
        let text = guest(&functions);
        let wasm = wat::parse_str(&text).unwrap_or_else(|e| panic!("the generated guest: {e}"));
        let code = engine.compile(&wasm).expect("the generated guest compiles");
        Self {
            engine,
            code,
            vm: None,
        }
    }

    fn run(&mut self, program: &[u8]) {
        if self.vm.is_none() {
            let mut config = VmConfig::new("fuzz");
            config.capture_logs = true;
            config.log_level = std::sync::Arc::new((LogLevel::Trace as u32).into());
            config.clusters = std::sync::Arc::new(|c| c == "cluster");
            let mut vm = Vm::new(&self.engine, &self.code, config).expect("the guest starts");
            let root = vm
                .start_root("fuzz", "root", b"config")
                .expect("the root context starts");
            self.vm = Some((vm, root));
        }
        let Some((vm, root)) = self.vm.as_mut() else {
            return;
        };
        let stream = HttpStream {
            request_headers: HeaderMap::from_pairs([
                (":method", "POST"),
                (":path", "/fuzz?x=1"),
                (":authority", "example.com"),
                ("content-type", "application/octet-stream"),
            ]),
            request_body: program.to_vec().into(),
            response_headers: HeaderMap::from_pairs([(":status", "200")]),
            ..HttpStream::default()
        }
        .shared();
        if let Ok(context) = vm.create_stream(*root, stream) {
            let _ = vm.request_headers(context, 4, false);
            let _ = vm.request_body(context, program.len() as u32, true);
            let _ = vm.response_headers(context, 1, true);
            let _ = vm.log(context);
            let _ = vm.done(context);
            let _ = vm.delete(context);
        }
        // Every call the program started ends, as the proxy ends them (a failure or a timeout
        // at the latest), so a long-lived VM holds no more than the proxy's would.
        for effect in vm.take_effects() {
            match effect {
                Effect::Call {
                    root_context,
                    token,
                    op: CallOp::Http(_),
                    ..
                } => {
                    let _ = vm.http_call_response(root_context, token, None);
                }
                Effect::Call {
                    root_context,
                    token,
                    op: CallOp::Grpc(_),
                    ..
                } => {
                    let close = GrpcEvent::Close {
                        status: 14,
                        message: b"fuzz".to_vec(),
                    };
                    let _ = vm.grpc_event(root_context, token, close);
                }
                Effect::Call {
                    root_context,
                    token,
                    op: CallOp::Redis(_),
                    ..
                } => {
                    let _ = vm.redis_call_response(root_context, token, None);
                }
                _ => {}
            }
        }
        let _ = vm.take_effects();
        let _ = vm.take_logs();
        if vm.failure().is_some() {
            self.vm = None;
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|program: &[u8]| {
    HARNESS.with(|harness| harness.borrow_mut().run(program));
});
