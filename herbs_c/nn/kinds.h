/* The constructors of every network kind (see registry.c). Each fills a fresh herbs_net:
   ops, image size, tensors in net->params (allocated by net_create afterwards), impl. */
#ifndef HERBS_NN_KINDS_H
#define HERBS_NN_KINDS_H

#include "nn/net.h"

herbs_status linear_net_create(herbs_net *net, herbs_config *config);
herbs_status herbs_net_create(herbs_net *net, herbs_config *config);
herbs_status resnet_net_create(herbs_net *net, herbs_config *config);
herbs_status swin_net_create(herbs_net *net, herbs_config *config);

#endif
