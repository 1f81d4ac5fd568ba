/* A configuration: the Python dict a model is built from, as (key, numbers or text) items.
   A model's constructor reads the keys it knows with defaults and rejects the others, so a
   misspelt key fails at construction with its name. */
#ifndef HERBS_NN_CONFIG_H
#define HERBS_NN_CONFIG_H

#include "core/error.h"

#define HERBS_CONFIG_MAX_ITEMS 64
#define HERBS_CONFIG_MAX_VALUES 8
#define HERBS_CONFIG_KEY_MAX 48

typedef struct {
    char key[HERBS_CONFIG_KEY_MAX];
    int count;                               /* numbers held; -1 for text */
    double values[HERBS_CONFIG_MAX_VALUES];
    char text[HERBS_CONFIG_KEY_MAX];
    int used;                                /* set when a getter read it */
} herbs_config_item;

typedef struct {
    int count;
    herbs_config_item items[HERBS_CONFIG_MAX_ITEMS];
} herbs_config;

herbs_status config_set_numbers(herbs_config *c, const char *key, const double *values, int count);
herbs_status config_set_text(herbs_config *c, const char *key, const char *text);

/* Getters: the default when the key is absent; an error naming the key when the value has the
   wrong form or lies outside [lo, hi]. */
herbs_status config_int(herbs_config *c, const char *key, int deflt, int lo, int hi, int *out);
herbs_status config_float(herbs_config *c, const char *key, double deflt, double lo, double hi, double *out);
/* Exactly n integers (a list/tuple in Python; a single number is repeated n times). */
herbs_status config_ints(herbs_config *c, const char *key, int n, const int *deflt, int lo, int hi, int *out);
/* Text; `allowed` is a NULL-terminated list of accepted values. */
herbs_status config_text(herbs_config *c, const char *key, const char *deflt, const char *const *allowed,
                         const char **out);

/* Fails naming the first key no getter has read. */
herbs_status config_check_all_used(const herbs_config *c, const char *what);

#endif
