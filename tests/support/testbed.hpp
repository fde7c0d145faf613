// The real Dovecot servers of tests/testbed, seen from C++ tests.
//
// Under ctest a fixture starts the bed once (SUCTION_TESTBED names its
// testbed.json) and a cleanup test stops it, even when tests fail or crash.
// Run by hand, a test binary starts its own bed and stops it at exit.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace suction::test {

struct server_info {
  std::string host;
  std::uint16_t imap_port = 0;   // plaintext + STARTTLS
  std::uint16_t imaps_port = 0;  // implicit TLS
  std::string log_path;
  std::string config_path;
};

struct testbed_info {
  std::string dir;
  std::string ca_file;
  std::map<std::string, std::string> users;  // name -> password
  server_info legacy, fresh;                 // "fresh" is the bed's "new" server
};

// The running bed (started on first use when not under ctest).
const testbed_info& testbed();

}  // namespace suction::test
