//! The WASI preview1 subset Proxy-Wasm hosts offer, under both `wasi_snapshot_preview1` and
//! `wasi_unstable`: stdout/stderr go to the plugin log, the environment is the plugin's vmConfig
//! env, time comes from the host clock, and everything that would touch files or sockets is a
//! harmless stub (TinyGo and Emscripten runtimes import these even when plugins never call them).

use sluice_abi::{LogLevel, wasi_errno};

use crate::imports::{Caller, Registrar, parts};

/// The guest called `proc_exit`: reported as a plugin failure, or as success when `_start` ends
/// with status 0.
#[derive(Debug, thiserror::Error)]
#[error("proc_exit({0})")]
pub(crate) struct ProcExit(pub i32);

/// Largest `random_get` request honoured (proxy-wasm-cpp-host's limit).
const MAX_RANDOM_BYTES: u32 = 64 * 1024;

fn errno(result: Result<(), i32>) -> i32 {
    result.err().unwrap_or(wasi_errno::SUCCESS)
}

fn fault<T>(_: T) -> i32 {
    wasi_errno::FAULT
}

pub(crate) fn register(r: &mut Registrar<'_>, module: &str) {
    r.func(
        module,
        "fd_write",
        |mut c: Caller<'_>, fd: i32, iovs: u32, count: u32, written: u32| {
            errno(fd_write(&mut c, fd, iovs, count, written))
        },
    );
    r.func(
        module,
        "fd_read",
        |mut c: Caller<'_>, fd: i32, _iovs: u32, _count: u32, read: u32| {
            if fd != 0 {
                return wasi_errno::BADF;
            }
            errno(
                parts(&mut c)
                    .map_err(fault)
                    .and_then(|(mut m, _)| m.write_u32(read, 0).map_err(fault)),
            )
        },
    );
    r.func(
        module,
        "environ_sizes_get",
        |mut c: Caller<'_>, count_ptr: u32, size_ptr: u32| {
            errno(environ_sizes_get(&mut c, count_ptr, size_ptr))
        },
    );
    r.func(
        module,
        "environ_get",
        |mut c: Caller<'_>, ptrs: u32, buf: u32| errno(environ_get(&mut c, ptrs, buf)),
    );
    r.func(
        module,
        "args_sizes_get",
        |mut c: Caller<'_>, count_ptr: u32, size_ptr: u32| {
            errno(write_words(&mut c, &[(count_ptr, 0), (size_ptr, 0)]))
        },
    );
    r.func(
        module,
        "args_get",
        |mut c: Caller<'_>, argv: u32, buf: u32| {
            errno(
                parts(&mut c)
                    .map_err(fault)
                    .and_then(|(m, _)| m.check(argv, 0).and(m.check(buf, 0)).map_err(fault)),
            )
        },
    );
    r.func(
        module,
        "clock_time_get",
        |mut c: Caller<'_>, id: u32, _precision: u64, time_ptr: u32| {
            let clock = c.data().clock.clone();
            let now = match id {
                0 => clock.now_unix_nanos(),
                1..=3 => clock.monotonic_nanos(),
                _ => return wasi_errno::NOTSUP,
            };
            errno(
                parts(&mut c)
                    .map_err(fault)
                    .and_then(|(mut m, _)| m.write_u64(time_ptr, now).map_err(fault)),
            )
        },
    );
    r.func(
        module,
        "clock_res_get",
        |mut c: Caller<'_>, id: u32, res_ptr: u32| {
            if id > 3 {
                return wasi_errno::NOTSUP;
            }
            errno(
                parts(&mut c)
                    .map_err(fault)
                    .and_then(|(mut m, _)| m.write_u64(res_ptr, 1_000).map_err(fault)),
            )
        },
    );
    r.func(
        module,
        "random_get",
        |mut c: Caller<'_>, buf: u32, len: u32| errno(random_get(&mut c, buf, len)),
    );
    r.func(
        module,
        "proc_exit",
        |_: Caller<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(ProcExit(code)))
        },
    );
    r.func(module, "proc_raise", |_: Caller<'_>, _signal: i32| {
        wasi_errno::NOSYS
    });
    r.func(module, "sched_yield", |_: Caller<'_>| wasi_errno::SUCCESS);
    // Nothing to wait for: report that no event happened, as proxy-wasm-cpp-host does.
    r.func(
        module,
        "poll_oneoff",
        |mut c: Caller<'_>, _in: u32, _out: u32, _n: u32, events: u32| {
            errno(write_words(&mut c, &[(events, 0)]))
        },
    );
    r.func(
        module,
        "fd_fdstat_get",
        |mut c: Caller<'_>, fd: i32, buf: u32| errno(fd_fdstat_get(&mut c, fd, buf)),
    );
    r.func(module, "fd_close", |_: Caller<'_>, fd: i32| badf(fd));
    r.func(
        module,
        "fd_seek",
        |_: Caller<'_>, fd: i32, _offset: i64, _whence: i32, _new: u32| badf(fd),
    );
    r.func(module, "fd_tell", |_: Caller<'_>, fd: i32, _offset: u32| {
        badf(fd)
    });
    r.func(module, "fd_sync", |_: Caller<'_>, fd: i32| badf(fd));
    r.func(module, "fd_datasync", |_: Caller<'_>, fd: i32| badf(fd));
    r.func(
        module,
        "fd_advise",
        |_: Caller<'_>, fd: i32, _offset: u64, _len: u64, _advice: i32| badf(fd),
    );
    r.func(
        module,
        "fd_allocate",
        |_: Caller<'_>, fd: i32, _offset: u64, _len: u64| badf(fd),
    );
    r.func(module, "fd_renumber", |_: Caller<'_>, fd: i32, _to: i32| {
        badf(fd)
    });
    r.func(
        module,
        "fd_fdstat_set_flags",
        |_: Caller<'_>, fd: i32, _flags: i32| badf(fd),
    );
    r.func(
        module,
        "fd_fdstat_set_rights",
        |_: Caller<'_>, fd: i32, _base: u64, _inheriting: u64| badf(fd),
    );
    r.func(
        module,
        "fd_filestat_get",
        |_: Caller<'_>, fd: i32, _buf: u32| badf(fd),
    );
    r.func(
        module,
        "fd_filestat_set_size",
        |_: Caller<'_>, fd: i32, _size: u64| badf(fd),
    );
    r.func(
        module,
        "fd_filestat_set_times",
        |_: Caller<'_>, fd: i32, _atim: u64, _mtim: u64, _flags: i32| badf(fd),
    );
    r.func(
        module,
        "fd_pread",
        |_: Caller<'_>, fd: i32, _iovs: u32, _n: u32, _offset: u64, _read: u32| badf(fd),
    );
    r.func(
        module,
        "fd_pwrite",
        |_: Caller<'_>, fd: i32, _iovs: u32, _n: u32, _offset: u64, _written: u32| badf(fd),
    );
    r.func(
        module,
        "fd_readdir",
        |_: Caller<'_>, fd: i32, _buf: u32, _len: u32, _cookie: u64, _used: u32| badf(fd),
    );
    // No preopened directories: BADF ends the guest's preopen scan.
    r.func(
        module,
        "fd_prestat_get",
        |_: Caller<'_>, _fd: i32, _buf: u32| wasi_errno::BADF,
    );
    r.func(
        module,
        "fd_prestat_dir_name",
        |_: Caller<'_>, _fd: i32, _path: u32, _len: u32| wasi_errno::BADF,
    );
    r.func(
        module,
        "path_open",
        |_: Caller<'_>,
         _fd: i32,
         _dirflags: i32,
         _path: u32,
         _len: u32,
         _oflags: i32,
         _base: u64,
         _inheriting: u64,
         _fdflags: i32,
         _opened: u32| { wasi_errno::NOSYS },
    );
    r.func(
        module,
        "path_create_directory",
        |_: Caller<'_>, _fd: i32, _path: u32, _len: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_remove_directory",
        |_: Caller<'_>, _fd: i32, _path: u32, _len: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_unlink_file",
        |_: Caller<'_>, _fd: i32, _path: u32, _len: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_filestat_get",
        |_: Caller<'_>, _fd: i32, _flags: i32, _path: u32, _len: u32, _buf: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_filestat_set_times",
        |_: Caller<'_>,
         _fd: i32,
         _flags: i32,
         _path: u32,
         _len: u32,
         _atim: u64,
         _mtim: u64,
         _fst: i32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_link",
        |_: Caller<'_>,
         _old_fd: i32,
         _flags: i32,
         _old: u32,
         _old_len: u32,
         _new_fd: i32,
         _new: u32,
         _new_len: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_readlink",
        |_: Caller<'_>, _fd: i32, _path: u32, _len: u32, _buf: u32, _buf_len: u32, _used: u32| {
            wasi_errno::NOSYS
        },
    );
    r.func(
        module,
        "path_rename",
        |_: Caller<'_>,
         _fd: i32,
         _old: u32,
         _old_len: u32,
         _new_fd: i32,
         _new: u32,
         _new_len: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "path_symlink",
        |_: Caller<'_>, _old: u32, _old_len: u32, _fd: i32, _new: u32, _new_len: u32| {
            wasi_errno::NOSYS
        },
    );
    r.func(
        module,
        "sock_accept",
        |_: Caller<'_>, _fd: i32, _flags: i32, _new: u32| wasi_errno::NOSYS,
    );
    r.func(
        module,
        "sock_recv",
        |_: Caller<'_>, _fd: i32, _data: u32, _len: u32, _flags: i32, _read: u32, _oflags: u32| {
            wasi_errno::NOSYS
        },
    );
    r.func(
        module,
        "sock_send",
        |_: Caller<'_>, _fd: i32, _data: u32, _len: u32, _flags: i32, _written: u32| {
            wasi_errno::NOSYS
        },
    );
    r.func(
        module,
        "sock_shutdown",
        |_: Caller<'_>, _fd: i32, _how: i32| wasi_errno::NOSYS,
    );
}

/// stdin, stdout and stderr exist; every other descriptor does not.
fn badf(fd: i32) -> i32 {
    if (0..=2).contains(&fd) {
        wasi_errno::NOTSUP
    } else {
        wasi_errno::BADF
    }
}

fn write_words(c: &mut Caller<'_>, words: &[(u32, u32)]) -> Result<(), i32> {
    let (mut memory, _) = parts(c).map_err(fault)?;
    for (ptr, value) in words {
        memory.write_u32(*ptr, *value).map_err(fault)?;
    }
    Ok(())
}

fn fd_write(c: &mut Caller<'_>, fd: i32, iovs: u32, count: u32, written: u32) -> Result<(), i32> {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Err(wasi_errno::BADF),
    };
    let (mut memory, state) = parts(c).map_err(fault)?;
    let mut text = Vec::new();
    for i in 0..count {
        let iov = iovs
            .checked_add(i.checked_mul(8).ok_or(wasi_errno::FAULT)?)
            .ok_or(wasi_errno::FAULT)?;
        let ptr = memory.read_u32(iov).map_err(fault)?;
        let len = memory
            .read_u32(iov.checked_add(4).ok_or(wasi_errno::FAULT)?)
            .map_err(fault)?;
        text.extend_from_slice(memory.read(ptr, len).map_err(fault)?);
    }
    memory
        .write_u32(written, text.len() as u32)
        .map_err(fault)?;
    let message = String::from_utf8_lossy(&text);
    let message = message.strip_suffix('\n').unwrap_or(&message);
    if !message.is_empty() {
        state.log(level, message.to_string());
    }
    Ok(())
}

fn environ_sizes_get(c: &mut Caller<'_>, count_ptr: u32, size_ptr: u32) -> Result<(), i32> {
    let (mut memory, state) = parts(c).map_err(fault)?;
    let size: usize = state.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    memory
        .write_u32(count_ptr, state.env.len() as u32)
        .map_err(fault)?;
    memory.write_u32(size_ptr, size as u32).map_err(fault)
}

fn environ_get(c: &mut Caller<'_>, ptrs: u32, buf: u32) -> Result<(), i32> {
    let (mut memory, state) = parts(c).map_err(fault)?;
    let mut offset = buf;
    for (i, (key, value)) in state.env.iter().enumerate() {
        let entry = format!("{key}={value}\0");
        memory
            .write_u32(ptrs.wrapping_add(i as u32 * 4), offset)
            .map_err(fault)?;
        memory.write(offset, entry.as_bytes()).map_err(fault)?;
        offset = offset
            .checked_add(entry.len() as u32)
            .ok_or(wasi_errno::FAULT)?;
    }
    Ok(())
}

fn fd_fdstat_get(c: &mut Caller<'_>, fd: i32, buf: u32) -> Result<(), i32> {
    if !(0..=2).contains(&fd) {
        return Err(wasi_errno::BADF);
    }
    // struct fdstat { u8 filetype; u16 flags; u64 rights_base; u64 rights_inheriting } = 24 bytes.
    const CHARACTER_DEVICE: u8 = 2;
    const FD_READ_WRITE: u64 = (1 << 1) | (1 << 6);
    let mut fdstat = [0u8; 24];
    fdstat[0] = CHARACTER_DEVICE;
    fdstat[8..16].copy_from_slice(&FD_READ_WRITE.to_le_bytes());
    let (mut memory, _) = parts(c).map_err(fault)?;
    memory.write(buf, &fdstat).map_err(fault)
}

fn random_get(c: &mut Caller<'_>, buf: u32, len: u32) -> Result<(), i32> {
    if len > MAX_RANDOM_BYTES {
        return Err(wasi_errno::INVAL);
    }
    let mut bytes = vec![0u8; len as usize];
    getrandom::fill(&mut bytes).map_err(|_| wasi_errno::NOSYS)?;
    let (mut memory, _) = parts(c).map_err(fault)?;
    memory.write(buf, &bytes).map_err(fault)
}
