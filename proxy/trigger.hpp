// What a successful login sets off: proxy::migration (the scheduler)
// implements it. Implementations must return at once: the login never waits
// on them.
#pragma once

#include <string>

#include "proxy/options.hpp"
#include "proxy/preauth.hpp"

namespace suction::proxy {

struct login_event {
  credentials creds;           // wiped when the event is destroyed; user: as typed
  mapped_login names;          // what creds.user stands for ([users])
  std::string client_address;  // IP
  std::string session_id;
};

class login_trigger {
 public:
  virtual ~login_trigger() = default;
  virtual void on_login(login_event event) = 0;
};

}  // namespace suction::proxy
