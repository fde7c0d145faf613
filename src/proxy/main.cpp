// The `suction` command line. Subcommands (proxy, sync, status) arrive with
// their issues; for now it answers --version and --help.
#include <CLI/CLI.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  CLI::App app{
      "suction: a transparent IMAP proxy that migrates each user's mail from the legacy "
      "server when they log in"};
  app.set_version_flag("--version", std::string("suction ") + SUCTION_VERSION);
  app.footer("Documentation: README.md. Subcommands proxy, sync and status come with their issues.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (argc == 1) {
    std::fputs(app.help().c_str(), stdout);
  }
  return 0;
}
