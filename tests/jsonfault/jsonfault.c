/*
 * jsonfault: an LD_PRELOAD library for tests. json_array_append_new
 * fails, as jansson does when it cannot allocate, for a string value
 * that contains GS_JSONFAULT_MATCH; every other call is jansson's. An
 * out-of-memory path that no test could reach otherwise (group export
 * --all naming a key it leaves out) is run through the real program.
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

__attribute__((visibility("default"))) int json_array_append_new(json_t *array, json_t *value)
{
    static int (*real)(json_t *, json_t *);
    const char *match = getenv("GS_JSONFAULT_MATCH");

    if (match != NULL && json_is_string(value) && strstr(json_string_value(value), match) != NULL) {
        json_decref(value); /* jansson's contract: the value is taken, also on failure */
        return -1;
    }
    if (real == NULL)
        *(void **)&real = dlsym(RTLD_NEXT, "json_array_append_new");
    if (real == NULL) {
        json_decref(value);
        return -1;
    }
    return real(array, value);
}
