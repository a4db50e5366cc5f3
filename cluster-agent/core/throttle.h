/* SPDX-License-Identifier: MIT */
// throttle.h - a limit on failed password checks per user.
//
// Each user has a budget of `burst` failures that refills evenly over
// `window` (a token bucket). A check for a user whose budget is spent is
// not made at all: the caller answers "try later" without running the
// password hash, so guessing runs at `burst` per `window`, not at the
// speed of crypt(3), and a flood of guesses cannot take the node's CPU.
// A success does not refill the budget (guesses between successes count).
// Memory is bounded: at most `max_users` users are tracked; when full,
// users whose budget has refilled are forgotten first, else the oldest.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <unordered_map>

#include "core/types.h"

namespace porcupine {

class FailureThrottle {
 public:
  FailureThrottle(std::uint32_t burst, Time window, std::size_t max_users = 100000)
      : burst_(burst), window_(std::max<Time>(window, 1)), max_users_(max_users) {}

  // Whether a check for `user` may be made now. burst 0: always.
  bool allowed(const std::string& user, Time now) {
    if (burst_ == 0) return true;
    auto it = users_.find(user);
    return it == users_.end() || refill(it->second, now) >= 1.0;
  }

  // Records a failed check; returns true when this failure spent the
  // user's last token (the moment to say so in the log, once).
  bool failed(const std::string& user, Time now) {
    if (burst_ == 0) return false;
    auto it = users_.find(user);
    if (it == users_.end()) {
      if (users_.size() >= max_users_) forget_some(now);
      it = users_.emplace(user, Budget{static_cast<double>(burst_), now}).first;
    }
    double& tokens = it->second.tokens;
    refill(it->second, now);
    tokens = std::max(0.0, tokens - 1.0);
    return tokens < 1.0;
  }

  std::size_t tracked() const { return users_.size(); }

 private:
  struct Budget {
    double tokens;
    Time at;  // when tokens was last brought up to date
  };

  double refill(Budget& b, Time now) {
    if (now > b.at) {
      b.tokens = std::min<double>(burst_, b.tokens + static_cast<double>(now - b.at) * burst_ / window_);
      b.at = now;
    }
    return b.tokens;
  }

  void forget_some(Time now) {
    for (auto it = users_.begin(); it != users_.end();)
      it = refill(it->second, now) >= burst_ ? users_.erase(it) : std::next(it);
    if (users_.size() < max_users_) return;
    auto oldest = std::min_element(users_.begin(), users_.end(),
                                   [](const auto& a, const auto& b) { return a.second.at < b.second.at; });
    users_.erase(oldest);
  }

  std::uint32_t burst_;
  Time window_;
  std::size_t max_users_;
  std::unordered_map<std::string, Budget> users_;
};

}  // namespace porcupine
