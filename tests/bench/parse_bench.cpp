// Parse throughput of a large FETCH response stream (BODY[] literals of mixed
// sizes), fed in socket-sized reads, as the sync engine will see it.
//
//   build/tests/bench/parse_bench [total_MB] [read_KB] [rounds]
//
// Prints MB/s (and messages/s) of the median round for four streams: mixed
// sizes with literals streamed (the engine's mode), mixed sizes with literals
// kept inline (copied into the value tree), small messages only (1-8 KB, where
// per-message parsing weighs most), and metadata only (UID FLAGS MODSEQ, no
// literals). The consumer reads every literal byte (a checksum), as a real
// consumer that writes them to a socket would, so zero-copy does not count as
// infinitely fast.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "imap/parser.hpp"
#include "imap/response.hpp"

using namespace suction::imap;

namespace {

enum class mix { mixed, small, metadata };

std::string make_stream(std::size_t total_bytes, mix m) {
  std::mt19937_64 rng(42);
  // Sizes as in a real mailbox: mostly small, some attachments, a few large.
  std::discrete_distribution<int> bucket(
      m == mix::small ? std::initializer_list<double>{1, 0, 0, 0}
                      : std::initializer_list<double>{60, 30, 9, 1});
  const std::size_t lo[] = {1024, 16 * 1024, 256 * 1024, 2 << 20};
  const std::size_t hi[] = {16 * 1024, 256 * 1024, 2 << 20, 8 << 20};
  std::string out;
  out.reserve(total_bytes + (8 << 20));
  std::string filler;
  for (int i = 0; i < 80; ++i) filler += static_cast<char>('A' + i % 26);
  filler += "\r\n";
  std::uint32_t seq = 0;
  while (out.size() < total_bytes) {
    int b = bucket(rng);
    std::size_t size = std::uniform_int_distribution<std::size_t>(
        lo[b], m == mix::small ? 8 * 1024 : hi[b])(rng);
    ++seq;
    if (m == mix::metadata) {
      out += "* " + std::to_string(seq) + " FETCH (UID " + std::to_string(seq + 1000) +
             " FLAGS (\\Seen $Forwarded) MODSEQ (" + std::to_string(seq * 7) + "))\r\n";
      continue;
    }
    out += "* " + std::to_string(seq) + " FETCH (UID " + std::to_string(seq + 1000) +
           " FLAGS (\\Seen $Forwarded) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE " +
           std::to_string(size) + " BODY[] {" + std::to_string(size) + "}\r\n";
    while (size > 0) {
      std::size_t n = std::min(size, filler.size());
      out.append(filler, 0, n);
      size -= n;
    }
    out += ")\r\n";
  }
  out += "a1 OK Fetch completed.\r\n";
  return out;
}

struct round_result {
  double seconds;
  std::size_t messages;
  std::uint64_t literal_bytes;
  std::uint64_t checksum;
};

std::uint64_t touch(std::string_view bytes) {
  std::uint64_t sum = 0;
  for (unsigned char c : bytes) sum += c;
  return sum;
}

round_result run(const std::string& stream, std::size_t read_size, std::size_t inline_max) {
  parser_limits limits;
  limits.inline_literal_max = inline_max;
  limits.max_literal = 64u << 20;
  limits.max_message = 64u << 20;
  response_parser p(limits);
  round_result r{0, 0, 0, 0};
  auto start = std::chrono::steady_clock::now();
  for (std::size_t off = 0; off < stream.size(); off += read_size) {
    std::string_view piece(stream.data() + off, std::min(read_size, stream.size() - off));
    for (;;) {
      auto res = p.feed(piece);
      piece.remove_prefix(res.consumed);
      if (res.event == parse_event::need_more) break;
      if (res.event == parse_event::literal_data) {
        r.literal_bytes += p.chunk().size();
        r.checksum += touch(p.chunk());
      }
      if (res.event == parse_event::message) {
        auto f = decode_fetch(p.response());
        if (f && f->uid) ++r.messages;
        if (f)
          if (auto* body = f->section("BODY[]"); body && !body->content->streamed)
            r.checksum += touch(body->content->text);
      }
      if (res.event == parse_event::error) {
        std::fprintf(stderr, "parse error: %s\n", p.error().message().c_str());
        std::exit(1);
      }
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t total_mb = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 512;
  std::size_t read_kb = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 64;
  int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  std::printf("streams of %zu MB, reads of %zu KB, %d rounds (median reported)\n", total_mb,
              read_kb, rounds);
  struct scenario {
    const char* name;
    mix m;
    std::size_t inline_max;
  };
  const scenario scenarios[] = {
      {"mixed sizes, streamed", mix::mixed, 0},
      {"mixed sizes, inline (copied)", mix::mixed, 64u << 20},
      {"small 1-8 KB, streamed", mix::small, 0},
      {"metadata only (no literals)", mix::metadata, 0},
  };
  std::printf("%-30s %12s %14s %22s\n", "stream", "parse MB/s", "msg/s",
              "vs reading the bytes");
  for (const auto& sc : scenarios) {
    std::string stream = make_stream(total_mb << 20, sc.m);
    double mb = static_cast<double>(stream.size()) / (1 << 20);
    // The floor any consumer pays: reading every byte once, in the same reads.
    std::vector<double> base;
    std::uint64_t base_sum = 0;
    for (int i = 0; i < rounds; ++i) {
      auto start = std::chrono::steady_clock::now();
      for (std::size_t off = 0; off < stream.size(); off += read_kb << 10)
        base_sum += touch(std::string_view(stream).substr(off, read_kb << 10));
      base.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(base.begin(), base.end());
    double base_median = base[base.size() / 2];
    std::vector<double> secs;
    round_result last{};
    for (int i = 0; i < rounds; ++i) {
      last = run(stream, read_kb << 10, sc.inline_max);
      secs.push_back(last.seconds);
    }
    std::sort(secs.begin(), secs.end());
    double median = secs[secs.size() / 2];
    std::printf("%-30s %12.0f %14.0f %8.2fx (%.0f MB/s)  [%zu messages, checksum %llx]\n",
                sc.name, mb / median, last.messages / median, base_median / median,
                mb / base_median, last.messages,
                static_cast<unsigned long long>((last.checksum ^ base_sum) & 0xffff));
  }
  return 0;
}
