// Test-only crash points on the completion publish (and one delay point in
// the busy poll, at the end). With
// VUBLK_TEST_CRASH_AT=<point>[:<minBatch>] in the environment the process
// SIGKILLs itself the first time it reaches <point> with a batch of at
// least minBatch heads (default 1), so tests can show the inflight region
// recovers from a crash between any two of its stores. Without the variable
// every crash point is one predictable branch on a value read once.
#pragma once

namespace vublk {

enum class CrashPoint {
  kNone,
  kPopMarked,              // a popped head is marked in flight, JS has not seen it
  kUsedWritten,            // used entries written and linked, used->idx not yet stored
  kUsedPublished,          // used->idx stored, no head of the batch cleared
  kInflightPartlyCleared,  // the first head of the batch cleared
  kInflightCleared,        // every head cleared, used_idx not yet stored
};

// Dies here if the environment asked for this point and batch size.
void crashPoint(CrashPoint point, unsigned batch);

// Test-only: with VUBLK_TEST_POLL_REARM_DELAY_MS=<ms> Session::poll sleeps
// that long after its last empty look and before it turns kicks back on,
// so a test can publish a request while it still sees kicks suppressed.
void pollRearmPoint();

}  // namespace vublk
