// Forwarding in the kernel instead of relaying, for one connection (relay_probe.py): both
// sockets go into a BPF sockmap whose verdict program redirects every segment to the other
// socket's egress, so the relay process never wakes for a command or an answer. A probe, not
// a relay: it ignores FIN ordering and has no bound on what queues for a slow reader (see
// tests/bench/RESULTS.md, session 20). Needs CAP_BPF and CAP_NET_ADMIN.
// usage: sockmap_relay LISTEN_PORT BACKEND_PORT MAX_SECONDS
#include "probe_net.hpp"

#include <linux/bpf.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

long bpf(int cmd, bpf_attr* a) { return syscall(SYS_bpf, cmd, a, sizeof *a); }

bpf_insn insn(std::uint8_t code, std::uint8_t dst, std::uint8_t src, std::int16_t off, std::int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}

int fail(const char* what) {
  perror(what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: sockmap_relay LISTEN_PORT BACKEND_PORT MAX_SECONDS\n");
    return 2;
  }
  const int listen_port = std::atoi(argv[1]), backend_port = std::atoi(argv[2]);
  alarm(static_cast<unsigned>(std::atoi(argv[3])));
  std::signal(SIGPIPE, SIG_IGN);
  bpf_attr a{};
  a.map_type = BPF_MAP_TYPE_SOCKMAP;
  a.key_size = 4;
  a.value_size = 4;
  a.max_entries = 2;  // 0: the client's socket, 1: the backend's
  const int map = static_cast<int>(bpf(BPF_MAP_CREATE, &a));
  if (map < 0) return fail("sockmap_relay: map");
  // A segment that arrived on the listening port's side (the client's) goes to entry 1, any
  // other (the backend's) to entry 0.
  const bpf_insn prog[] = {
      insn(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),                                     // r6 = skb
      insn(BPF_LDX | BPF_W | BPF_MEM, 2, 1, offsetof(__sk_buff, local_port), 0),          // r2 = local port
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 0),                                     // r3 = 0
      insn(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 1, listen_port),                             // not ours: keep 0
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 1),                                     // r3 = 1
      insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),                                     // r1 = skb
      insn(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map), insn(0, 0, 0, 0, 0),  // r2 = map
      insn(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),                                     // r4 = 0: egress
      insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_map),
      insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  static char log[65536];
  a = {};
  a.prog_type = BPF_PROG_TYPE_SK_SKB;
  a.insns = reinterpret_cast<std::uint64_t>(prog);
  a.insn_cnt = sizeof prog / sizeof prog[0];
  a.license = reinterpret_cast<std::uint64_t>("GPL");
  a.log_buf = reinterpret_cast<std::uint64_t>(log);
  a.log_size = sizeof log;
  a.log_level = 1;
  const int prog_fd = static_cast<int>(bpf(BPF_PROG_LOAD, &a));
  if (prog_fd < 0) {
    std::fputs(log, stderr);
    return fail("sockmap_relay: load");
  }
  a = {};
  a.target_fd = static_cast<std::uint32_t>(map);
  a.attach_bpf_fd = static_cast<std::uint32_t>(prog_fd);
  a.attach_type = BPF_SK_SKB_VERDICT;
  if (bpf(BPF_PROG_ATTACH, &a) < 0) return fail("sockmap_relay: attach");

  const int c = probe::accept_one(listen_port);
  const int b = probe::connect_to(backend_port);
  const int fds[2] = {c, b};
  for (std::uint32_t key = 0; key < 2; ++key) {
    std::uint32_t value = static_cast<std::uint32_t>(fds[key]);
    a = {};
    a.map_fd = static_cast<std::uint32_t>(map);
    a.key = reinterpret_cast<std::uint64_t>(&key);
    a.value = reinterpret_cast<std::uint64_t>(&value);
    a.flags = BPF_ANY;
    if (bpf(BPF_MAP_UPDATE_ELEM, &a) < 0) return fail("sockmap_relay: update");
  }
  // What arrived before a socket joined the map (the greeting) is still queued there and would
  // wait for the next segment: pass it on by hand (one greeting, one read).
  for (int k = 0; k < 2; ++k) {
    int queued = 0;
    ioctl(fds[k], FIONREAD, &queued);
    char buf[4096];
    if (queued > 0) {
      const ssize_t n = recv(fds[k], buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) send(fds[1 - k], buf, static_cast<size_t>(n), MSG_NOSIGNAL);
    }
  }
  // Sleep until either side closes.
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLRDHUP;
  ev.data.fd = c;
  epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
  ev.data.fd = b;
  epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
  epoll_event out[2];
  while (epoll_wait(ep, out, 2, -1) <= 0) {
  }
  return 0;
}
