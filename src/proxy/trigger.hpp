// What a successful login sets off. The scheduler implements it (migration
// issue); until then log_only_trigger logs the user. Implementations must
// return at once: the login never waits on them.
#pragma once

#include <string>

#include "proxy/preauth.hpp"

namespace suction::proxy {

struct login_event {
  credentials creds;           // wiped when the event is destroyed
  std::string client_address;  // IP
  std::string session_id;
};

class login_trigger {
 public:
  virtual ~login_trigger() = default;
  virtual void on_login(login_event event) = 0;
};

class log_only_trigger final : public login_trigger {
 public:
  void on_login(login_event event) override;
};

}  // namespace suction::proxy
