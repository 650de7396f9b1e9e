/*
 * A datagram's own address on a socket bound to every address (IP_PKTINFO, ip(7)).
 *
 * Why: a host with several IPv4 addresses (a secondary address, a floating or virtual
 * IP) answers from whichever address its route to the peer prefers unless told
 * otherwise, and ICE drops what does not come from the address it checked (RFC 8445
 * §7.2.5.2.1). With IP_PKTINFO on (rtc/mux.py turns it on for a wildcard-bound media
 * socket) every datagram read carries the address it was sent to, and every datagram
 * sent can name its source in the same control message (`ipi_spec_dst`).
 */
#ifndef CALLSCTL_PKTINFO_H
#define CALLSCTL_PKTINFO_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>  /* first: its _GNU_SOURCE brings struct in_pktinfo */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Room for one IP_PKTINFO control message, aligned as cmsg(3) requires. */
typedef union {
    struct cmsghdr align;
    unsigned char space[CMSG_SPACE(sizeof(struct in_pktinfo))];
} SourceControl;

/* Send `header` from `source` (NULL: the kernel's choice, no control message). */
static inline void
set_source(struct msghdr *header, SourceControl *control, const struct in_addr *source)
{
    if (source == NULL) {
        header->msg_control = NULL;
        header->msg_controllen = 0;
        return;
    }
    memset(control, 0, sizeof(*control));
    header->msg_control = control->space;
    header->msg_controllen = sizeof(control->space);
    struct cmsghdr *cm = CMSG_FIRSTHDR(header);
    cm->cmsg_level = IPPROTO_IP;
    cm->cmsg_type = IP_PKTINFO;
    cm->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    struct in_pktinfo info;
    memset(&info, 0, sizeof(info));
    info.ipi_spec_dst = *source;
    memcpy(CMSG_DATA(cm), &info, sizeof(info));
}

/* The address a received datagram was sent to: 1 and *destination set when its control
   messages carry IP_PKTINFO, else 0. */
static inline int
destination_of(struct msghdr *header, struct in_addr *destination)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(header); cm != NULL; cm = CMSG_NXTHDR(header, cm)) {
        if (cm->cmsg_level != IPPROTO_IP || cm->cmsg_type != IP_PKTINFO ||
            cm->cmsg_len < CMSG_LEN(sizeof(struct in_pktinfo)))
            continue;
        struct in_pktinfo info;
        memcpy(&info, CMSG_DATA(cm), sizeof(info));
        *destination = info.ipi_addr;
        return 1;
    }
    return 0;
}

/* "a.b.c.d" into *address: 1, or 0 (not an IPv4 address). */
static inline int
parse_source(const char *text, struct in_addr *address)
{
    return inet_pton(AF_INET, text, address) == 1;
}

#endif
