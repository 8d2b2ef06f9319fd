// Stop strings over streamed text: emits text as soon as it cannot be the start of a stop string,
// holds back a possible partial match, and cuts the output at the first complete match.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace gptoss::server {

class StopMatcher {
 public:
  // Empty strings in `stops` are ignored.
  explicit StopMatcher(std::vector<std::string> stops = {});

  // Appends text and returns the part that is safe to emit now. When a stop string completes, the
  // text before it is returned, stopped() becomes true and later pushes return nothing.
  std::string push(std::string_view text);
  // End of stream: returns the held-back tail (nothing after a match).
  std::string flush();
  bool stopped() const { return stopped_; }
  bool active() const { return !stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace gptoss::server
