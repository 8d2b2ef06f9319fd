// Process helpers for the CLI tests: pipes, a pseudo-terminal driver and the shared demo model.
#include "cli/process.h"

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace gptoss::testing {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {
std::vector<char*> to_argv(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

int remaining_ms(Clock::time_point deadline) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms < 0 ? 0 : static_cast<int>(ms);
}

void fill_status(int status, bool* exited, int* code, int* sig) {
  if (WIFEXITED(status)) {
    *exited = true;
    *code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    *sig = WTERMSIG(status);
  }
}
}  // namespace

ProcResult run_process(const std::vector<std::string>& args, const std::string& stdin_text,
                       const std::vector<std::pair<std::string, std::string>>& env, int timeout_s) {
  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe(in_pipe) || pipe(out_pipe) || pipe(err_pipe)) throw std::runtime_error("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    auto argv = to_argv(args);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  signal(SIGPIPE, SIG_IGN);  // the child may exit without reading all of stdin
  ProcResult r;
  size_t written = 0;
  int in_fd = in_pipe[1], out_fd = out_pipe[0], err_fd = err_pipe[0];
  if (stdin_text.empty()) {
    close(in_fd);
    in_fd = -1;
  }
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (out_fd >= 0 || err_fd >= 0) {
    std::vector<pollfd> fds;
    if (in_fd >= 0) fds.push_back({in_fd, POLLOUT, 0});
    if (out_fd >= 0) fds.push_back({out_fd, POLLIN, 0});
    if (err_fd >= 0) fds.push_back({err_fd, POLLIN, 0});
    const int n = poll(fds.data(), fds.size(), remaining_ms(deadline));
    if (n == 0) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    if (n < 0 && errno == EINTR) continue;
    for (const pollfd& p : fds) {
      if (!p.revents) continue;
      if (p.fd == in_fd) {
        const ssize_t w = ::write(in_fd, stdin_text.data() + written, stdin_text.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if (w < 0 || written == stdin_text.size()) {
          close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      char buf[65536];
      const ssize_t got = read(p.fd, buf, sizeof buf);
      std::string& dst = p.fd == out_fd ? r.out : r.err;
      if (got > 0) {
        dst.append(buf, static_cast<size_t>(got));
      } else {
        close(p.fd);
        (p.fd == out_fd ? out_fd : err_fd) = -1;
      }
    }
  }
  for (int fd : {in_fd, out_fd, err_fd})
    if (fd >= 0) close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  fill_status(status, &r.exited, &r.exit_code, &r.term_signal);
  return r;
}

ProcResult run_gptoss(const std::vector<std::string>& args, const std::string& stdin_text, int timeout_s) {
  std::vector<std::string> full{GPTOSS_BIN};
  full.insert(full.end(), args.begin(), args.end());
  return run_process(full, stdin_text, {}, timeout_s);
}

PtyProcess::PtyProcess(const std::vector<std::string>& args) {
  struct winsize ws {};
  ws.ws_row = 50;
  ws.ws_col = 200;
  pid_ = forkpty(&master_, nullptr, nullptr, &ws);
  if (pid_ == 0) {
    setenv("TERM", "xterm", 1);
    unsetenv("NO_COLOR");
    auto argv = to_argv(args);
    execv(argv[0], argv.data());
    _exit(127);
  }
}

PtyProcess::~PtyProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  if (master_ >= 0) close(master_);
}

void PtyProcess::write(const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(master_, text.data() + done, text.size() - done);
    if (w <= 0) return;
    done += static_cast<size_t>(w);
  }
}

bool PtyProcess::read_some(int timeout_ms) {
  pollfd p{master_, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return false;
  char buf[4096];
  const ssize_t got = read(master_, buf, sizeof buf);
  if (got <= 0) return false;  // EIO once the child closed the terminal
  output_.append(buf, static_cast<size_t>(got));
  return true;
}

bool PtyProcess::wait_for(const std::string& marker, size_t from, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (output_.find(marker, from) != std::string::npos) return true;
    const int left = remaining_ms(deadline);
    if (left == 0) return false;
    if (!read_some(left)) {
      if (output_.find(marker, from) != std::string::npos) return true;
      // No data: either timed out or the terminal closed (the child ended).
      if (remaining_ms(deadline) == 0) return false;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        fill_status(status, &exited_, &exit_code_, &term_signal_);
        return false;
      }
    }
  }
}

bool PtyProcess::wait_exit(int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!reaped_) {
    read_some(50);  // keep draining so the child never blocks on a full terminal
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      fill_status(status, &exited_, &exit_code_, &term_signal_);
      while (read_some(20)) {
      }
      break;
    }
    if (remaining_ms(deadline) == 0) return false;
  }
  return true;
}

std::string make_temp_dir(const std::string& tag) {
  // mkdtemp's template: it replaces the six trailing X characters with a unique suffix.
  std::string tmpl = (fs::temp_directory_path() / ("gptoss-" + tag + "-XXXXXX")).string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

namespace {
// The demo checkpoint of this test process, removed when the process ends.
struct DemoModel {
  std::string dir;
  ~DemoModel() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};
}  // namespace

std::string demo_model_dir() {
  // Built fresh by each test process (0.2 s) so it always matches the binary under test.
  static DemoModel demo;
  if (!demo.dir.empty()) return demo.dir;
  const std::string dir = make_temp_dir("demo");
  const ProcResult r = run_gptoss({"init-random", "--preset", "demo", "--out", dir, "--seed", "7"});
  if (!r.exited || r.exit_code != 0) throw std::runtime_error("init-random failed: " + r.err);
  fs::create_symlink(fs::absolute(GPTOSS_TOKENIZER), fs::path(dir) / "tokenizer.json");
  demo.dir = dir;
  return dir;
}

}  // namespace gptoss::testing
