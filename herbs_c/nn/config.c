#include "nn/config.h"

#include <math.h>
#include <string.h>

static herbs_config_item *find(herbs_config *c, const char *key)
{
    for (int i = 0; i < c->count; i++)
        if (strcmp(c->items[i].key, key) == 0)
            return &c->items[i];
    return NULL;
}

static herbs_status new_item(herbs_config *c, const char *key, herbs_config_item **out)
{
    if (strlen(key) >= HERBS_CONFIG_KEY_MAX)
        return herbs_error(HERBS_ERR_VALUE, "config key '%.60s...' is too long", key);
    if (find(c, key))
        return herbs_error(HERBS_ERR_VALUE, "config key '%s' given twice", key);
    if (c->count == HERBS_CONFIG_MAX_ITEMS)
        return herbs_error(HERBS_ERR_VALUE, "more than %d config keys", HERBS_CONFIG_MAX_ITEMS);
    herbs_config_item *it = &c->items[c->count++];
    memset(it, 0, sizeof *it);
    strcpy(it->key, key);
    *out = it;
    return HERBS_OK;
}

herbs_status config_set_numbers(herbs_config *c, const char *key, const double *values, int count)
{
    if (count < 0 || count > HERBS_CONFIG_MAX_VALUES)
        return herbs_error(HERBS_ERR_VALUE, "config key '%s' has %d values (at most %d)", key, count,
                           HERBS_CONFIG_MAX_VALUES);
    herbs_config_item *it;
    HERBS_TRY(new_item(c, key, &it));
    it->count = count;
    memcpy(it->values, values, count * sizeof *values);
    return HERBS_OK;
}

herbs_status config_set_text(herbs_config *c, const char *key, const char *text)
{
    if (strlen(text) >= HERBS_CONFIG_KEY_MAX)
        return herbs_error(HERBS_ERR_VALUE, "config value of '%s' is too long", key);
    herbs_config_item *it;
    HERBS_TRY(new_item(c, key, &it));
    it->count = -1;
    strcpy(it->text, text);
    return HERBS_OK;
}

static herbs_status check_int(const char *key, double v, int lo, int hi, int *out)
{
    if (v != floor(v))
        return herbs_error(HERBS_ERR_VALUE, "config '%s' must be an integer, got %g", key, v);
    if (v < lo || v > hi)
        return herbs_error(HERBS_ERR_VALUE, "config '%s' = %g is outside [%d, %d]", key, v, lo, hi);
    *out = (int)v;
    return HERBS_OK;
}

herbs_status config_int(herbs_config *c, const char *key, int deflt, int lo, int hi, int *out)
{
    herbs_config_item *it = find(c, key);
    if (!it) {
        *out = deflt;
        return HERBS_OK;
    }
    it->used = 1;
    if (it->count != 1)
        return herbs_error(HERBS_ERR_VALUE, "config '%s' must be one integer", key);
    return check_int(key, it->values[0], lo, hi, out);
}

herbs_status config_float(herbs_config *c, const char *key, double deflt, double lo, double hi, double *out)
{
    herbs_config_item *it = find(c, key);
    if (!it) {
        *out = deflt;
        return HERBS_OK;
    }
    it->used = 1;
    if (it->count != 1)
        return herbs_error(HERBS_ERR_VALUE, "config '%s' must be one number", key);
    double v = it->values[0];
    if (!(v >= lo && v <= hi))
        return herbs_error(HERBS_ERR_VALUE, "config '%s' = %g is outside [%g, %g]", key, v, lo, hi);
    *out = v;
    return HERBS_OK;
}

herbs_status config_ints(herbs_config *c, const char *key, int n, const int *deflt, int lo, int hi, int *out)
{
    herbs_config_item *it = find(c, key);
    if (!it) {
        memcpy(out, deflt, n * sizeof *out);
        return HERBS_OK;
    }
    it->used = 1;
    if (it->count != n && it->count != 1)
        return herbs_error(HERBS_ERR_VALUE, "config '%s' must have %d integers, got %d", key, n,
                           it->count < 0 ? 0 : it->count);
    for (int i = 0; i < n; i++)
        HERBS_TRY(check_int(key, it->values[it->count == 1 ? 0 : i], lo, hi, &out[i]));
    return HERBS_OK;
}

herbs_status config_text(herbs_config *c, const char *key, const char *deflt, const char *const *allowed,
                         const char **out)
{
    herbs_config_item *it = find(c, key);
    const char *v = deflt;
    if (it) {
        it->used = 1;
        if (it->count != -1)
            return herbs_error(HERBS_ERR_VALUE, "config '%s' must be text", key);
        v = it->text;
    }
    for (int i = 0; allowed && allowed[i]; i++)
        if (strcmp(allowed[i], v) == 0) {
            *out = allowed[i];
            return HERBS_OK;
        }
    if (!allowed) {
        *out = v;
        return HERBS_OK;
    }
    char list[256] = "";
    for (int i = 0; allowed[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, allowed[i], sizeof list - strlen(list) - 1);
    }
    return herbs_error(HERBS_ERR_VALUE, "config '%s' = '%s' is not one of: %s", key, v, list);
}

herbs_status config_check_all_used(const herbs_config *c, const char *what)
{
    for (int i = 0; i < c->count; i++)
        if (!c->items[i].used)
            return herbs_error(HERBS_ERR_VALUE, "unknown config key '%s' for %s", c->items[i].key, what);
    return HERBS_OK;
}
