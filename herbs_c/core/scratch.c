#include "core/scratch.h"

#include <pthread.h>
#include <stdlib.h>

#include "core/arena.h"

typedef struct {
    void *data[HERBS_SCRATCH_SLOTS];
    size_t capacity[HERBS_SCRATCH_SLOTS]; /* bytes */
} scratch_set;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_destroy(void *p)
{
    scratch_set *set = p;
    for (int i = 0; i < HERBS_SCRATCH_SLOTS; i++)
        herbs_free(set->data[i]);
    free(set);
}

static void scratch_key_create(void) { pthread_key_create(&scratch_key, scratch_destroy); }

void *herbs_scratch(herbs_scratch_slot slot, size_t bytes)
{
    pthread_once(&scratch_once, scratch_key_create);
    scratch_set *set = pthread_getspecific(scratch_key);
    if (!set) {
        set = calloc(1, sizeof *set);
        if (!set || pthread_setspecific(scratch_key, set) != 0) {
            free(set);
            return NULL;
        }
    }
    if (set->capacity[slot] < bytes) {
        herbs_free(set->data[slot]);
        set->capacity[slot] = 0;
        set->data[slot] = herbs_aligned_alloc(bytes);
        if (!set->data[slot])
            return NULL;
        set->capacity[slot] = bytes;
    }
    return set->data[slot];
}
