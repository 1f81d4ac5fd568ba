#include "nn/registry.h"

#include <string.h>

#include "nn/efficientnet.h"
#include "nn/patches.h"
#include "nn/resnet.h"
#include "nn/swin.h"
#include "nn/vit.h"

/* The backbones, the HERBS model's default first. */
static const backbone_spec backbones[] = {
    {"swin", swin_backbone_create, FPN_TOKENS},
    {"resnet", resnet_backbone_create, FPN_CNN},
    {"patches", patches_backbone_create, FPN_TOKENS},
    {"vit", vit_backbone_create, FPN_TOKENS},
    {"efficientnet", efficientnet_backbone_create, FPN_CNN},
};
#define N_BACKBONES (int)(sizeof backbones / sizeof backbones[0])

/* The kinds with code of their own (each backbone is a kind too). */
static const struct {
    const char *kind;
    herbs_status (*create)(herbs_net *net, herbs_config *config);
} kinds[] = {
    {"linear", linear_net_create},
    {"herbs", herbs_net_create},
};
#define N_KINDS (int)(sizeof kinds / sizeof kinds[0])

static const backbone_spec *find_backbone(const char *name)
{
    for (int i = 0; i < N_BACKBONES; i++)
        if (strcmp(backbones[i].name, name) == 0)
            return &backbones[i];
    return NULL;
}

herbs_status registry_create(herbs_net *net, const char *kind, herbs_config *config)
{
    for (int i = 0; i < N_KINDS; i++)
        if (strcmp(kinds[i].kind, kind) == 0)
            return kinds[i].create(net, config);
    const backbone_spec *spec = find_backbone(kind);
    if (spec)
        return backbone_net_create(net, config, spec);
    char names[256] = "";
    for (int i = 0; i < N_KINDS + N_BACKBONES; i++) {
        strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
        strncat(names, i < N_KINDS ? kinds[i].kind : backbones[i - N_KINDS].name, sizeof names - strlen(names) - 1);
    }
    return herbs_error(HERBS_ERR_VALUE, "unknown network kind '%s' (known: %s)", kind, names);
}

herbs_status registry_backbone(herbs_config *config, const char *key, const backbone_spec **out)
{
    const char *names[N_BACKBONES + 1], *name;
    for (int i = 0; i < N_BACKBONES; i++)
        names[i] = backbones[i].name;
    names[N_BACKBONES] = NULL;
    HERBS_TRY(config_text(config, key, backbones[0].name, names, &name));
    *out = find_backbone(name);
    return HERBS_OK;
}
