// Subcommand registry: each src/cli/<name>.cpp registers one `gptoss <name>` command with
// GPTOSS_COMMAND. A command returns the process exit code; it reports errors itself on stderr.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"

namespace gptoss::cli {

using CommandFn = std::function<int(int argc, char** argv)>;  // argv[0] is the command name

struct Command {
  std::string name;
  std::string summary;
  CommandFn run;
};

// Registry of commands, filled during static initialisation and read-only afterwards.
std::vector<Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string summary, CommandFn fn);
};

// Prints "gptoss <cmd>: error: <message>" to stderr and returns exit code 1.
int report_error(const std::string& command, const Status& status);

}  // namespace gptoss::cli

#define GPTOSS_COMMAND(name, summary, fn) \
  static ::gptoss::cli::CommandRegistrar GPTOSS_CONCAT(gptoss_cmd_, __LINE__)(name, summary, fn)
