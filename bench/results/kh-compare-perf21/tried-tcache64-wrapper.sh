#!/bin/sh
# tried: the network process with glibc tcache_count 64 (serve passes no environment: a wrapper in the bin dir)
GLIBC_TUNABLES=glibc.malloc.tcache_count=64 exec /path/to/real/groupsrv-net "$@"
