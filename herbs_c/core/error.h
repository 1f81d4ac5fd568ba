/* Errors are values: a function that can fail returns a herbs_status and leaves a message
   (thread-local) that the Python binding raises as an exception. Kernels never print or abort. */
#ifndef HERBS_CORE_ERROR_H
#define HERBS_CORE_ERROR_H

typedef enum {
    HERBS_OK = 0,
    HERBS_ERR_VALUE,   /* a bad argument value or shape (Python ValueError) */
    HERBS_ERR_TYPE,    /* a bad argument type or dtype (Python TypeError) */
    HERBS_ERR_NOMEM,   /* an allocation failed (Python MemoryError) */
    HERBS_ERR_STATE,   /* the object is not in a state that allows the call (Python RuntimeError) */
    HERBS_ERR_NUMERIC, /* a non-finite value where one was checked for (Python FloatingPointError) */
} herbs_status;

/* Records the message of the current thread's last error and returns `code`. */
herbs_status herbs_error(herbs_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message of the current thread's last error ("" if none). */
const char *herbs_error_message(void);

/* Propagates a failure: `HERBS_TRY(f(...));` returns f's status from the caller if it failed. */
#define HERBS_TRY(expr)                        \
    do {                                       \
        herbs_status herbs_try_s_ = (expr);    \
        if (herbs_try_s_ != HERBS_OK)          \
            return herbs_try_s_;               \
    } while (0)

#endif
