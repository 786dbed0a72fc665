/* Callgrind markers for cold_call.py: instrumentation (and the cache simulation) runs only
   between mark_start and mark_stop, so the measured call starts with empty simulated caches:
   every code and data line it touches is a miss, i.e. a count of distinct lines. */
#include <valgrind/callgrind.h>
void mark_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void mark_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
