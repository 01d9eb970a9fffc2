# Fuzz targets of every parser of untrusted input (tests/fuzz/README.md):
# one line each, gs_fuzz_target(NAME LIBS...) from tests/fuzz/gs_fuzz.cmake.
gs_fuzz_target(envelope gs_envelope)
gs_fuzz_target(mail gs_exploder_core)
gs_fuzz_target(restclient gs_restclient)
gs_fuzz_target(config gs_groupsrv_core gs_exploder_core gs_groupmail_core)
# The key holder's frame parser (groupsrv/ipc.c), and the network process's
# request handling up to the key holder, which the target fakes
# (gs_net_fuzzing: tests/keyholder.cmake).
gs_fuzz_target(ipc gs_groupsrv_base)
gs_fuzz_target(http gs_net_fuzzing)
# What the network process follows of a request as it comes in (the head,
# a chunked body's framing: groupsrv/server/reqscan.c), which fuzz_http's
# plain-HTTP connections never reach.
gs_fuzz_target(reqscan gs_reqscan)
