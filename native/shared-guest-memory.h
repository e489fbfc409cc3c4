// A connection's guest memory table shared by the sessions of several
// data-plane threads: the JS class GuestMemory maps the regions once, and a
// process-wide registry lets a Session on any thread find it by token.
//
// Contract: regions change (addRegion, removeRegion, clearRegions) only
// while every Session using the table is quiesced: no ring running, nothing
// in flight. Each Session then registers its fixed buffers again and
// re-translates its rings when they restart. The hot path takes no lock.
// The maps live while the GuestMemory object or any Session holds them.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>

#include "guest-memory.h"
#include "unique-fd.h"

namespace vublk {

// The table registered under token, or nullptr if none (or destroyed).
std::shared_ptr<GuestMemory> findSharedGuestMemory(double token);

// addRegion(fd, gpa, size, uva, mmapOffset) into mem, for the GuestMemory
// class and a Session with private memory: the caller owns fd (taken from
// argument 0 before any check that may throw); it is always closed.
// Returns the bufId; throws the rule a bad region broke.
Napi::Value addGuestRegion(const Napi::CallbackInfo& info, UniqueFd fd, GuestMemory& mem);

// [{bufId, mmapOffset}] for the active regions of mem.
Napi::Array describeRegions(Napi::Env env, const GuestMemory& mem);

}  // namespace vublk
