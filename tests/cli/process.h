// Test helpers that drive the real gptoss binary: run it with pipes (stdin text in, stdout and
// stderr captured separately), or under a pseudo-terminal, and build the demo model once.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace gptoss::testing {

struct ProcResult {
  bool exited = false;  // ended through exit() (not a signal, not a timeout)
  int exit_code = -1;
  int term_signal = 0;  // signal that ended it, 0 if none
  bool timed_out = false;
  std::string out, err;
};

// Runs `args` (args[0] is the program path) with `stdin_text` on stdin; extra environment
// variables are added to the inherited ones. Killed after timeout_s.
ProcResult run_process(const std::vector<std::string>& args, const std::string& stdin_text = "",
                       const std::vector<std::pair<std::string, std::string>>& env = {}, int timeout_s = 300);

// `gptoss <args...>` with GPTOSS_BIN.
ProcResult run_gptoss(const std::vector<std::string>& args, const std::string& stdin_text = "", int timeout_s = 300);

// A child process on a pseudo-terminal: its stdin, stdout and stderr are all the terminal.
class PtyProcess {
 public:
  explicit PtyProcess(const std::vector<std::string>& args);
  ~PtyProcess();
  PtyProcess(const PtyProcess&) = delete;
  PtyProcess& operator=(const PtyProcess&) = delete;

  bool started() const { return pid_ > 0; }
  // Types text into the terminal (as a user would; "\n" is Enter, "\x03" is Ctrl-C).
  void write(const std::string& text);
  // Reads until `marker` appears in the output after position `from` (returns true), or until
  // timeout / end of output (false).
  bool wait_for(const std::string& marker, size_t from, int timeout_ms);
  // Waits for the process to end; fills exit status fields. Returns false on timeout.
  bool wait_exit(int timeout_ms);
  const std::string& output() const { return output_; }
  bool exited() const { return exited_; }
  int exit_code() const { return exit_code_; }
  int term_signal() const { return term_signal_; }

 private:
  bool read_some(int timeout_ms);
  pid_t pid_ = -1;
  int master_ = -1;
  std::string output_;
  bool exited_ = false, reaped_ = false;
  int exit_code_ = -1, term_signal_ = 0;
};

// A demo checkpoint (init-random --preset demo --seed 7, plus a link to the real tokenizer.json),
// built once per test process in a temporary folder removed at exit. Returns its folder.
std::string demo_model_dir();

// A fresh empty temporary folder, removed by the caller (or left in /tmp on failure).
std::string make_temp_dir(const std::string& tag);

}  // namespace gptoss::testing
