/* The kinds of network net_create can build, by name. */
#ifndef HERBS_NN_REGISTRY_H
#define HERBS_NN_REGISTRY_H

#include "nn/net.h"

herbs_net_create_fn registry_find(const char *kind);

/* "swin, resnet, ..." for error messages. */
const char *registry_names(void);

#endif
