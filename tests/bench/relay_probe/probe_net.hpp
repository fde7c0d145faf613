// The sockets both probes need: one client accepted on a loopback port and one connection to
// the backend, both with TCP_NODELAY as suction sets it. Any failure ends the probe.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace probe {

inline sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return a;
}

inline void no_delay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Listens on 127.0.0.1:port and returns the first client.
inline int accept_one(int port) {
  const int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const sockaddr_in a = loopback(port);
  if (bind(ls, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 || listen(ls, 4) != 0) {
    std::perror("probe: listen");
    std::exit(1);
  }
  const int c = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  if (c < 0) {
    std::perror("probe: accept");
    std::exit(1);
  }
  no_delay(c);
  return c;
}

inline int connect_to(int port) {
  const int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const sockaddr_in a = loopback(port);
  if (connect(s, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    std::perror("probe: connect");
    std::exit(1);
  }
  no_delay(s);
  return s;
}

}  // namespace probe
