#include "core/cpu.h"

#include <string.h>

static int selected = -1; /* -1: not chosen yet, use the best */

herbs_isa herbs_isa_best(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return HERBS_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return HERBS_ISA_AVX2;
#endif
    return HERBS_ISA_PORTABLE;
}

herbs_isa herbs_isa_current(void) { return selected < 0 ? herbs_isa_best() : (herbs_isa)selected; }

const char *herbs_isa_name(herbs_isa isa)
{
    switch (isa) {
    case HERBS_ISA_AVX512: return "avx512";
    case HERBS_ISA_AVX2: return "avx2";
    default: return "portable";
    }
}

herbs_status herbs_isa_select(const char *name)
{
    for (int isa = HERBS_ISA_PORTABLE; isa <= HERBS_ISA_AVX512; isa++) {
        if (strcmp(name, herbs_isa_name((herbs_isa)isa)) != 0)
            continue;
        if (isa > (int)herbs_isa_best())
            return herbs_error(HERBS_ERR_VALUE, "ISA '%s' is not supported by this CPU (best: '%s')",
                               name, herbs_isa_name(herbs_isa_best()));
        selected = isa;
        return HERBS_OK;
    }
    return herbs_error(HERBS_ERR_VALUE, "unknown ISA '%s': expected 'avx512', 'avx2' or 'portable'", name);
}
