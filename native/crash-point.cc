// Test-only crash points: reads VUBLK_TEST_CRASH_AT once and SIGKILLs the
// process at the named point of the completion publish; and the busy poll's
// re-arm delay (VUBLK_TEST_POLL_REARM_DELAY_MS). See crash-point.h.
#include "crash-point.h"

#include <signal.h>
#include <time.h>

#include <cstdlib>
#include <cstring>

namespace vublk {

namespace {

struct Armed {
  CrashPoint point = CrashPoint::kNone;
  unsigned minBatch = 1;
};

Armed readEnv() {
  Armed a;
  const char* v = getenv("VUBLK_TEST_CRASH_AT");
  if (!v || !*v) return a;
  static const struct {
    const char* name;
    CrashPoint point;
  } kNames[] = {{"pop-marked", CrashPoint::kPopMarked},
                {"used-written", CrashPoint::kUsedWritten},
                {"used-published", CrashPoint::kUsedPublished},
                {"inflight-partly-cleared", CrashPoint::kInflightPartlyCleared},
                {"inflight-cleared", CrashPoint::kInflightCleared}};
  const char* colon = strchr(v, ':');
  size_t len = colon ? static_cast<size_t>(colon - v) : strlen(v);
  for (const auto& n : kNames)
    if (strlen(n.name) == len && strncmp(n.name, v, len) == 0) a.point = n.point;
  if (colon) a.minBatch = static_cast<unsigned>(strtoul(colon + 1, nullptr, 10));
  return a;
}

const Armed kArmed = readEnv();

long readDelayMs() {
  const char* v = getenv("VUBLK_TEST_POLL_REARM_DELAY_MS");
  return v && *v ? strtol(v, nullptr, 10) : 0;
}

const long kRearmDelayMs = readDelayMs();

}  // namespace

void crashPoint(CrashPoint point, unsigned batch) {
  if (point != kArmed.point || batch < kArmed.minBatch) return;
  raise(SIGKILL);
}

void pollRearmPoint() {
  if (kRearmDelayMs <= 0) return;
  timespec ts{kRearmDelayMs / 1000, (kRearmDelayMs % 1000) * 1000000};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

}  // namespace vublk
