// gptoss: one binary, many subcommands (see `gptoss help`).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/command.h"
#include "core/log.h"

namespace gptoss::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> registry;  // filled by static registrars before main()
  return registry;
}

CommandRegistrar::CommandRegistrar(std::string name, std::string summary, CommandFn fn) {
  command_registry().push_back({std::move(name), std::move(summary), std::move(fn)});
}

int report_error(const std::string& command, const Status& status) {
  std::fprintf(stderr, "gptoss %s: error: %s\n", command.c_str(), status.message().c_str());
  return 1;
}

namespace {
void print_usage(FILE* out) {
  auto cmds = command_registry();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  std::fprintf(out, "usage: gptoss <command> [options]   (gptoss <command> --help for its options)\n\ncommands:\n");
  for (const auto& c : cmds) std::fprintf(out, "  %-12s %s\n", c.name.c_str(), c.summary.c_str());
}
}  // namespace

}  // namespace gptoss::cli

int main(int argc, char** argv) {
  using namespace gptoss::cli;
  gptoss::log_init_from_env();
  if (argc < 2 || !std::strcmp(argv[1], "help") || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : command_registry()) {
    if (c.name == argv[1]) {
      try {
        return c.run(argc - 1, argv + 1);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "gptoss %s: error: %s\n", argv[1], e.what());
        return 1;
      }
    }
  }
  std::fprintf(stderr, "gptoss: unknown command '%s'\n", argv[1]);
  print_usage(stderr);
  return 2;
}
