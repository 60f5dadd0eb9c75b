/* smtp_machine_priv.h — the machine's internals shared by its two files,
 * smtp_machine.c and milter_gate.c. Not for anyone else: the proxy drives
 * the machine through smtp_machine.h only.
 */
#ifndef TLSFRONT_SMTP_MACHINE_PRIV_H
#define TLSFRONT_SMTP_MACHINE_PRIV_H

#include "proxy/smtp/smtp_machine.h"

void sm_fifo_push(struct smtp_machine *m, struct smtp_pending p);
struct smtp_pending *sm_fifo_peek(struct smtp_machine *m);
void sm_fifo_pop(struct smtp_machine *m);
void sm_to_client(struct smtp_machine *m, const char *p, size_t n);
void sm_to_backend(struct smtp_machine *m, const char *p, size_t n);
void sm_forward_line(struct smtp_machine *m, const char *line, size_t len);
void sm_out_of_memory(struct smtp_machine *m);
void sm_local_reply(struct smtp_machine *m, const char *reply);
void sm_release_local(struct smtp_machine *m);
void sm_queue_local(struct smtp_machine *m, const char *reply);
void sm_process_client(struct smtp_machine *m);

/* milter_gate.c */
/* A command that passed the rules: true when the gate took it (it waits
 * for the milters or was answered). */
bool sm_milter_command(struct smtp_machine *m, enum smtp_verb verb, const char *line, size_t len);
/* The FIFO head is one of the gate's kinds: releases it; false when the
 * release must wait (a verdict is awaited). */
bool sm_milter_release(struct smtp_machine *m, struct smtp_pending *p);
/* The backend's reply to a forwarded command (before it is relayed). */
void sm_milter_reply(struct smtp_machine *m, enum smtp_verb verb, int code);
/* The backend's reply to tlsfront's MAIL or RCPT after the milters'
 * changes. */
void sm_milter_replay_reply(struct smtp_machine *m, const struct smtp_pending *p, int code);
/* The backend's reply to tlsfront's DATA for a held message. */
void sm_milter_held_data_reply(struct smtp_machine *m, int code, const char *text, size_t len);
/* The end of held content. */
void sm_milter_data_end(struct smtp_machine *m);
void sm_milter_free(struct smtp_machine *m);

#endif
