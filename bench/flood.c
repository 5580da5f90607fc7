/* A UDP flood of one prebuilt Ethernet frame through AF_PACKET + sendmmsg
 * (pktgen is not built on these machines). Runs in the sender's namespace;
 * prints the frames the kernel accepted and the seconds it ran.
 *   flood IFNAME DST_MAC SRC_MAC SRC_IP DST_IP SECONDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 256

static void mac(const char *s, unsigned char *out)
{
	sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &out[0], &out[1], &out[2], &out[3], &out[4], &out[5]);
}

static unsigned short csum(const unsigned short *p, int n)
{
	unsigned long s = 0;

	for (; n > 1; n -= 2)
		s += *p++;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return ~s;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned char f[60] = {0};
	struct sockaddr_ll sll = {0};
	struct mmsghdr msgs[BATCH];
	struct iovec iov = {f, sizeof(f)};
	unsigned long long sent = 0;
	double t0, end;
	int fd, i;

	if (argc != 7) {
		fprintf(stderr, "usage: %s IFNAME DST_MAC SRC_MAC SRC_IP DST_IP SECONDS\n", argv[0]);
		return 2;
	}
	mac(argv[2], f);
	mac(argv[3], f + 6);
	f[12] = 0x08;
	/* IPv4: 20 + UDP 8 + 18 payload = 46 bytes (a 60-byte frame) */
	f[14] = 0x45; f[16] = 0; f[17] = 46; f[22] = 64; f[23] = 17;
	inet_pton(AF_INET, argv[4], f + 26);
	inet_pton(AF_INET, argv[5], f + 30);
	*(unsigned short *)(f + 24) = csum((unsigned short *)(f + 14), 20);
	f[34] = 0x9c; f[35] = 0x40;	/* source port 40000 */
	f[36] = 0x00; f[37] = 0x09;	/* destination port 9 (discard: nobody listens) */
	f[38] = 0; f[39] = 26;	/* UDP length; checksum 0 (none) */

	fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) { perror("socket"); return 1; }
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = if_nametoindex(argv[1]);
	if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) { perror("bind"); return 1; }
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	t0 = now();
	end = t0 + atof(argv[6]);
	while (now() < end) {
		int n = sendmmsg(fd, msgs, BATCH, 0);

		if (n > 0)
			sent += n;
	}
	printf("%llu %.3f\n", sent, now() - t0);
	return 0;
}
