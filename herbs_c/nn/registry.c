#include "nn/registry.h"

#include <string.h>

#include "nn/kinds.h"

static const struct {
    const char *kind;
    herbs_net_create_fn create;
} kinds[] = {
    {"linear", linear_net_create},
    {"herbs", herbs_net_create},
    {"resnet", resnet_net_create},
    {"swin", swin_net_create},
};

herbs_net_create_fn registry_find(const char *kind)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].kind, kind) == 0)
            return kinds[i].create;
    return NULL;
}

const char *registry_names(void)
{
    static char names[256];
    names[0] = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
        strncat(names, kinds[i].kind, sizeof names - strlen(names) - 1);
    }
    return names;
}
