#include "testbed.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#ifndef SUCTION_SOURCE_DIR
#error "SUCTION_SOURCE_DIR must name the source tree"
#endif

namespace suction::test {
namespace {

namespace fs = std::filesystem;

server_info read_server(const nlohmann::json& j) {
  server_info s;
  s.host = j.at("host").get<std::string>();
  s.imap_port = j.at("imap_port").get<std::uint16_t>();
  s.imaps_port = j.at("imaps_port").get<std::uint16_t>();
  s.log_path = j.at("log_path").get<std::string>();
  s.config_path = j.at("config_path").get<std::string>();
  return s;
}

testbed_info read_info(const fs::path& json_path) {
  std::ifstream in(json_path);
  if (!in) throw std::runtime_error("cannot read " + json_path.string());
  auto j = nlohmann::json::parse(in);
  testbed_info t;
  t.dir = json_path.parent_path().string();
  t.ca_file = j.at("ca_file").get<std::string>();
  for (auto& [name, pw] : j.at("users").items()) t.users[name] = pw.get<std::string>();
  t.legacy = read_server(j.at("legacy"));
  t.fresh = read_server(j.at("new"));
  return t;
}

std::string script() { return std::string(SUCTION_SOURCE_DIR) + "/tests/testbed/testbed.py"; }

// A bed this process started itself; stopped when the process exits.
struct own_bed {
  fs::path dir;
  testbed_info info;
  own_bed() {
    char tmpl[] = "/tmp/suction-testbed-XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    std::string cmd = "python3 '" + script() + "' up --dir '" + dir.string() + "'";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("test bed did not start: " + cmd);
    info = read_info(dir / "testbed.json");
  }
  ~own_bed() {
    std::string cmd = "python3 '" + script() + "' down --dir '" + dir.string() + "'";
    std::system(cmd.c_str());
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace

const testbed_info& testbed() {
  if (const char* path = std::getenv("SUCTION_TESTBED")) {
    static const testbed_info shared = read_info(path);
    return shared;
  }
  static own_bed bed;
  return bed.info;
}

}  // namespace suction::test
