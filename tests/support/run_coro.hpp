// Runs one coroutine to completion on a private io_context, bounded in time.
#pragma once

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <exception>
#include <optional>
#include <stdexcept>

namespace suction::test {

template <class T, class Factory>
T run_coro(Factory&& make, std::chrono::seconds limit = std::chrono::seconds(60)) {
  boost::asio::io_context io;
  std::optional<T> result;
  std::exception_ptr error;
  boost::asio::co_spawn(io, make(io.get_executor()), [&](std::exception_ptr e, T r) {
    error = e;
    if (!e) result = std::move(r);
  });
  io.run_for(limit);
  if (error) std::rethrow_exception(error);
  if (!result) throw std::runtime_error("coroutine did not finish within the time limit");
  return std::move(*result);
}

}  // namespace suction::test
