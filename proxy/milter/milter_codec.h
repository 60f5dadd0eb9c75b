/* milter_codec.h — the milter protocol, version 6, as libmilter and Postfix
 * speak it (issue 14), without I/O: encoders of the MTA's commands into a
 * struct buf, a bounded incremental packet reader, and parsers of every
 * reply a milter may send.
 *
 * A packet is a 4-byte big-endian length (the command byte and the payload),
 * the command byte, then the payload. Strings are NUL-terminated inside the
 * payload; integers are 32-bit big-endian (the port of SMFIC_CONNECT 16-bit).
 *
 * Never does I/O, never uses libuv, never logs, never reads a clock. The
 * parsed replies point into the reader's packet (valid until the next feed).
 */
#ifndef TLSFRONT_MILTER_CODEC_H
#define TLSFRONT_MILTER_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/smtp/buf.h"

#define MILTER_VERSION 6

/* Commands, MTA to milter (SMFIC_*). */
#define SMFIC_ABORT   'A'
#define SMFIC_BODY    'B'
#define SMFIC_CONNECT 'C'
#define SMFIC_MACRO   'D'
#define SMFIC_BODYEOB 'E'
#define SMFIC_HELO    'H'
#define SMFIC_QUIT_NC 'K'
#define SMFIC_HEADER  'L'
#define SMFIC_MAIL    'M'
#define SMFIC_EOH     'N'
#define SMFIC_OPTNEG  'O'
#define SMFIC_QUIT    'Q'
#define SMFIC_RCPT    'R'
#define SMFIC_DATA    'T'
#define SMFIC_UNKNOWN 'U'

/* Replies, milter to MTA (SMFIR_*). */
#define SMFIR_ADDRCPT	  '+'
#define SMFIR_DELRCPT	  '-'
#define SMFIR_ADDRCPT_PAR '2'
#define SMFIR_SHUTDOWN	  '4'
#define SMFIR_ACCEPT	  'a'
#define SMFIR_REPLBODY	  'b'
#define SMFIR_CONTINUE	  'c'
#define SMFIR_DISCARD	  'd'
#define SMFIR_CHGFROM	  'e'
#define SMFIR_CONN_FAIL	  'f'
#define SMFIR_ADDHEADER	  'h'
#define SMFIR_INSHEADER	  'i'
#define SMFIR_SETSYMLIST  'l'
#define SMFIR_CHGHEADER	  'm'
#define SMFIR_PROGRESS	  'p'
#define SMFIR_QUARANTINE  'q'
#define SMFIR_REJECT	  'r'
#define SMFIR_SKIP	  's'
#define SMFIR_TEMPFAIL	  't'
#define SMFIR_REPLYCODE	  'y'
#define SMFIR_OPTNEG	  'O'

/* Actions a milter may take (SMFIF_*). */
#define SMFIF_ADDHDRS	   0x001u
#define SMFIF_CHGBODY	   0x002u
#define SMFIF_ADDRCPT	   0x004u
#define SMFIF_DELRCPT	   0x008u
#define SMFIF_CHGHDRS	   0x010u
#define SMFIF_QUARANTINE   0x020u
#define SMFIF_CHGFROM	   0x040u
#define SMFIF_ADDRCPT_PAR  0x080u
#define SMFIF_SETSYMLIST   0x100u
#define MILTER_ACTIONS_ALL 0x1ffu

/* Protocol steps (SMFIP_*): events the milter does not want (NO*), events
 * it does not answer (NR_*). */
#define SMFIP_NOCONNECT	  0x00000001u
#define SMFIP_NOHELO	  0x00000002u
#define SMFIP_NOMAIL	  0x00000004u
#define SMFIP_NORCPT	  0x00000008u
#define SMFIP_NOBODY	  0x00000010u
#define SMFIP_NOHDRS	  0x00000020u
#define SMFIP_NOEOH	  0x00000040u
#define SMFIP_NR_HDR	  0x00000080u
#define SMFIP_NOUNKNOWN	  0x00000100u
#define SMFIP_NODATA	  0x00000200u
#define SMFIP_SKIP	  0x00000400u
#define SMFIP_RCPT_REJ	  0x00000800u
#define SMFIP_NR_CONN	  0x00001000u
#define SMFIP_NR_HELO	  0x00002000u
#define SMFIP_NR_MAIL	  0x00004000u
#define SMFIP_NR_RCPT	  0x00008000u
#define SMFIP_NR_DATA	  0x00010000u
#define SMFIP_NR_UNKN	  0x00020000u
#define SMFIP_NR_EOH	  0x00040000u
#define SMFIP_NR_BODY	  0x00080000u
#define SMFIP_HDR_LEADSPC 0x00100000u

/* What tlsfront offers: every NO* and NR_* step (it honours them all), SKIP
 * and HDR_LEADSPC; not RCPT_REJ (it never sees refused recipients) nor the
 * larger body chunks (MDS_*: it always sends at most 65535 bytes). */
#define MILTER_PROTOCOL_OFFER                                                                      \
	(SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY |             \
	 SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA | SMFIP_SKIP | \
	 SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA |           \
	 SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_HDR_LEADSPC)

/* SMFIC_CONNECT families. */
#define SMFIA_UNKNOWN 'U'
#define SMFIA_UNIX    'L'
#define SMFIA_INET    '4'
#define SMFIA_INET6   '6'

#define MILTER_CHUNK_MAX  65535u		/* body bytes per SMFIC_BODY */
#define MILTER_PACKET_MAX ((1u << 20) + 65536u) /* command byte + payload */

/* ---- Encoders: each appends one or more whole packets to b and returns
 * false (b unchanged) when out of memory or when the packet would exceed
 * MILTER_PACKET_MAX. NULL strings are sent as "". */

bool milter_put_optneg(struct buf *b, uint32_t version, uint32_t actions, uint32_t protocol);
/* SMFIC_MACRO for stage (the command letter it precedes: SMFIC_CONNECT,
 * SMFIC_HELO, ...): n name/value pairs from pairs[0..2n-1]; a pair whose
 * value is NULL or "" is left out. Nothing is appended (and true returned)
 * when no pair remains. */
bool milter_put_macros(struct buf *b, char stage, const char *const *pairs, size_t n);
/* SMFIC_CONNECT: family SMFIA_*; for SMFIA_UNKNOWN only the host name and
 * the family are sent (as libmilter reads it). */
bool milter_put_connect(struct buf *b, const char *host, char family, uint16_t port,
			const char *addr);
bool milter_put_helo(struct buf *b, const char *helo);
/* SMFIC_MAIL or SMFIC_RCPT from the command's argument text: the path
 * (up to its closing '>', quoted parts included) then each space-separated
 * ESMTP argument, each as its own string. */
bool milter_put_args(struct buf *b, char cmd, const char *line_args);
bool milter_put_header(struct buf *b, const char *name, const char *value);
/* SMFIC_BODY: n bytes in packets of at most MILTER_CHUNK_MAX bytes (none
 * when n is 0). */
bool milter_put_body(struct buf *b, const char *p, size_t n);
/* A command without payload: SMFIC_DATA, SMFIC_EOH, SMFIC_BODYEOB,
 * SMFIC_ABORT, SMFIC_QUIT, SMFIC_QUIT_NC. */
bool milter_put_simple(struct buf *b, char cmd);

/* ---- The reader. */

enum milter_read_status { MILTER_READ_MORE = 0, MILTER_READ_PACKET, MILTER_READ_BAD };

struct milter_reader {
	unsigned char head[4]; /* the length being read */
	size_t head_len;
	uint32_t want;	/* the packet's length once head is complete */
	struct buf pkt; /* command byte + payload; owned */
	bool complete;	/* pkt holds a whole packet (dropped at the next feed) */
	uint32_t max;	/* largest length accepted (0: MILTER_PACKET_MAX) */
};

struct milter_packet {
	char cmd;
	const char *payload; /* into the reader; valid until its next feed */
	size_t len;
};

/* Consumes bytes up to the end of one packet and returns how many. Sets
 * *st: MILTER_READ_PACKET with *pkt filled when a packet is complete,
 * MILTER_READ_BAD when the length is 0 or above the bound or memory ran out
 * (the reader is then useless until reset), else MILTER_READ_MORE. */
size_t milter_reader_feed(struct milter_reader *r, const char *p, size_t n,
			  struct milter_packet *pkt, enum milter_read_status *st);
void milter_reader_reset(struct milter_reader *r);
void milter_reader_free(struct milter_reader *r);

/* ---- Replies. */

#define MILTER_SMTP_REPLY_MAX 1024 /* the SMTP reply made from SMFIR_REPLYCODE */

struct milter_reply {
	char cmd; /* SMFIR_* */
	/* SMFIR_OPTNEG */
	uint32_t version, actions, protocol;
	/* SMFIR_INSHEADER, SMFIR_CHGHEADER: index; SMFIR_SETSYMLIST: stage */
	uint32_t index;
	/* SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_CHGHEADER */
	const char *name, *value;
	/* SMFIR_ADDRCPT, SMFIR_ADDRCPT_PAR, SMFIR_DELRCPT, SMFIR_CHGFROM:
	 * addr, and args (NULL: none); SMFIR_QUARANTINE: addr is the reason;
	 * SMFIR_SETSYMLIST: addr is the macro list */
	const char *addr, *args;
	/* SMFIR_REPLBODY */
	const char *data;
	size_t data_len;
	/* SMFIR_REPLYCODE: code (4xx or 5xx) and the SMTP reply, CRLF-ended,
	 * "-" on every line but the last */
	int code;
	char smtp[MILTER_SMTP_REPLY_MAX];
};

/* Parses one reply packet. Returns 0, or -1 when it is malformed (an
 * unknown command, a missing NUL, a short integer, trailing bytes, a
 * replycode that is not a 4xx/5xx reply). */
int milter_parse_reply(const struct milter_packet *pkt, struct milter_reply *out);

/* The SMTP reply of SMFIR_REPLYCODE text into out (outlen bytes, at least
 * 16): lines separated by CRLF (or bare LF) each get the code and '-' or
 * ' '; lines that do not fit are left out (the first one is cut). Returns
 * the code (400-599), or -1 when text does not start with a 4xx/5xx code
 * followed by ' ', '-' or its end, or its enhanced status class differs. */
int milter_format_reply(const char *text, char *out, size_t outlen);

/* The outcome of negotiation: the milter's version must be 2..6; its
 * actions and protocol steps are masked by what was offered. Returns 0 or
 * -1 (version out of range). */
int milter_negotiated(const struct milter_reply *r, uint32_t offered_actions,
		      uint32_t offered_protocol, uint32_t *actions, uint32_t *protocol);

#endif
