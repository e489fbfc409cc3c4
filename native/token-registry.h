// A process-wide registry of native objects shared by token: the object made
// on one thread (GuestMemory, RbdImage) is found by Sessions on any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace vublk {

// Weak: the registry never keeps an object alive; tokens are never reused.
template <class T>
class TokenRegistry {
 public:
  uint32_t add(const std::shared_ptr<T>& obj) {
    std::lock_guard<std::mutex> g(lock_);
    uint32_t token = next_++;
    map_[token] = obj;
    return token;
  }
  void remove(uint32_t token) {
    std::lock_guard<std::mutex> g(lock_);
    map_.erase(token);
  }
  // The object registered under token, or nullptr if none (or gone).
  std::shared_ptr<T> find(double token) {
    if (!(token >= 1 && token <= UINT32_MAX)) return nullptr;
    std::lock_guard<std::mutex> g(lock_);
    auto it = map_.find(static_cast<uint32_t>(token));
    return it == map_.end() ? nullptr : it->second.lock();
  }

 private:
  std::mutex lock_;
  std::unordered_map<uint32_t, std::weak_ptr<T>> map_;
  uint32_t next_ = 1;
};

}  // namespace vublk
