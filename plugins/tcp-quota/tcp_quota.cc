// tcp-quota: a network (L4) plugin in C++, written against the Proxy-Wasm ABI 0.2.1 directly
// (no SDK) and built with Debian's clang and wasi-libc (see the Makefile).
//
// Configuration: the number of bytes a client may send on one connection, in decimal ("1024").
// Bytes within the quota pass. The read that goes past it is cut to what is left of the quota,
// and the next read closes the connection (a read the connection is closed on reaches no one). Metrics: `tcp_quota.connections` (counter),
// `tcp_quota.open` (gauge), `tcp_quota.cut` (counter), `tcp_quota.client_bytes` (histogram of
// what each connection sent, recorded when it closes).

#include <stdint.h>
#include <stdlib.h>

#include <string>
#include <unordered_map>

// ---- the host's side of the ABI --------------------------------------------------------------

#define HOST(name) __attribute__((import_module("env"), import_name(#name)))

extern "C" {
HOST(proxy_log) uint32_t proxy_log(uint32_t level, const char* message, size_t size);
HOST(proxy_get_buffer_bytes)
uint32_t proxy_get_buffer_bytes(uint32_t type, uint32_t start, uint32_t length, char** data,
                                size_t* size);
HOST(proxy_set_buffer_bytes)
uint32_t proxy_set_buffer_bytes(uint32_t type, uint32_t start, uint32_t length, const char* data,
                                size_t size);
HOST(proxy_get_property)
uint32_t proxy_get_property(const char* path, size_t path_size, char** value, size_t* value_size);
HOST(proxy_define_metric)
uint32_t proxy_define_metric(uint32_t type, const char* name, size_t name_size, uint32_t* id);
HOST(proxy_increment_metric) uint32_t proxy_increment_metric(uint32_t id, int64_t offset);
HOST(proxy_record_metric) uint32_t proxy_record_metric(uint32_t id, uint64_t value);
HOST(proxy_close_stream) uint32_t proxy_close_stream(uint32_t stream_type);
}

namespace {

enum : uint32_t { kInfo = 2, kWarn = 3, kError = 4 };
enum : uint32_t { kDownstreamData = 2, kPluginConfiguration = 7 };
enum : uint32_t { kCounter = 0, kGauge = 1, kHistogram = 2 };
enum : uint32_t { kContinue = 0, kPause = 1 };
enum : uint32_t { kDownstream = 2 };

void log(uint32_t level, const std::string& message) {
  proxy_log(level, message.data(), message.size());
}

// A host buffer's bytes; the host allocates them with proxy_on_memory_allocate (malloc).
std::string take(char* data, size_t size) {
  std::string bytes(data == nullptr ? "" : data, size);
  free(data);
  return bytes;
}

std::string buffer(uint32_t type, size_t size) {
  char* data = nullptr;
  size_t got = 0;
  if (proxy_get_buffer_bytes(type, 0, size, &data, &got) != 0) return "";
  return take(data, got);
}

std::string property(const char* path, size_t size) {
  char* data = nullptr;
  size_t got = 0;
  if (proxy_get_property(path, size, &data, &got) != 0) return "";
  return take(data, got);
}

uint32_t metric(uint32_t type, const std::string& name) {
  uint32_t id = 0;
  proxy_define_metric(type, name.data(), name.size(), &id);
  return id;
}

struct Root {
  uint64_t quota = 0;
  uint32_t connections = 0, open = 0, cut = 0, client_bytes = 0;
};

struct Connection {
  uint32_t root_id = 0;
  uint64_t sent = 0;
  // The quota was reached: the next read closes the connection.
  bool full = false;
};

// Static constructors run from _initialize: the module is a WASI reactor.
std::unordered_map<uint32_t, Root> roots;
std::unordered_map<uint32_t, Connection> connections;

}  // namespace

// ---- the plugin's side of the ABI ------------------------------------------------------------

extern "C" {

__attribute__((export_name("proxy_abi_version_0_2_1"))) void proxy_abi_version_0_2_1() {}

__attribute__((export_name("proxy_on_memory_allocate"))) void* proxy_on_memory_allocate(
    size_t size) {
  return malloc(size);
}

__attribute__((export_name("proxy_on_context_create"))) void proxy_on_context_create(
    uint32_t context_id, uint32_t root_id) {
  if (root_id == 0) {
    roots[context_id];
  } else {
    connections[context_id].root_id = root_id;
  }
}

__attribute__((export_name("proxy_on_vm_start"))) uint32_t proxy_on_vm_start(uint32_t,
                                                                            uint32_t) {
  return 1;
}

__attribute__((export_name("proxy_on_configure"))) uint32_t proxy_on_configure(uint32_t root_id,
                                                                              uint32_t size) {
  std::string text = buffer(kPluginConfiguration, size);
  char* end = nullptr;
  unsigned long long quota = strtoull(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size()) {
    log(kError, "tcp-quota: the configuration must be a number of bytes, not \"" + text + "\"");
    return 0;
  }
  Root& root = roots[root_id];
  root.quota = quota;
  root.connections = metric(kCounter, "tcp_quota.connections");
  root.open = metric(kGauge, "tcp_quota.open");
  root.cut = metric(kCounter, "tcp_quota.cut");
  root.client_bytes = metric(kHistogram, "tcp_quota.client_bytes");
  log(kInfo, "tcp-quota: " + std::to_string(quota) + " byte(s) per connection");
  return 1;
}

__attribute__((export_name("proxy_on_new_connection"))) uint32_t proxy_on_new_connection(
    uint32_t context_id) {
  Root& root = roots[connections[context_id].root_id];
  proxy_increment_metric(root.connections, 1);
  proxy_increment_metric(root.open, 1);
  return kContinue;
}

__attribute__((export_name("proxy_on_downstream_data"))) uint32_t proxy_on_downstream_data(
    uint32_t context_id, uint32_t size, uint32_t) {
  Connection& connection = connections[context_id];
  Root& root = roots[connection.root_id];
  if (connection.full) {
    std::string from = property("source\0address", 14);
    log(kWarn, "tcp-quota: closing " + from + ": past " + std::to_string(root.quota) +
                   " byte(s)");
    proxy_close_stream(kDownstream);
    return kContinue;
  }
  uint64_t left = root.quota - connection.sent;
  if (size < left) {
    connection.sent += size;
    return kContinue;
  }
  // The quota is reached: what is left of it passes, the rest of this read is cut.
  connection.full = true;
  if (size > left) {
    std::string keep = buffer(kDownstreamData, size).substr(0, left);
    proxy_set_buffer_bytes(kDownstreamData, 0, size, keep.data(), keep.size());
    proxy_increment_metric(root.cut, 1);
  }
  connection.sent += left;
  return kContinue;
}

__attribute__((export_name("proxy_on_upstream_data"))) uint32_t proxy_on_upstream_data(uint32_t,
                                                                                      uint32_t,
                                                                                      uint32_t) {
  return kContinue;
}

__attribute__((export_name("proxy_on_downstream_connection_close"))) void
proxy_on_downstream_connection_close(uint32_t, uint32_t) {}

__attribute__((export_name("proxy_on_upstream_connection_close"))) void
proxy_on_upstream_connection_close(uint32_t, uint32_t) {}

__attribute__((export_name("proxy_on_done"))) uint32_t proxy_on_done(uint32_t) { return 1; }

__attribute__((export_name("proxy_on_log"))) void proxy_on_log(uint32_t context_id) {
  auto found = connections.find(context_id);
  if (found == connections.end()) return;
  Root& root = roots[found->second.root_id];
  proxy_increment_metric(root.open, -1);
  proxy_record_metric(root.client_bytes, found->second.sent);
}

__attribute__((export_name("proxy_on_delete"))) void proxy_on_delete(uint32_t context_id) {
  connections.erase(context_id);
  roots.erase(context_id);
}
}
