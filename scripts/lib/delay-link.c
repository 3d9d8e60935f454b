// delay-link: a userspace stand-in for `tc qdisc ... netem delay` on kernels without sch_netem.
// Runs in a switch's network namespace between PEERDEV (the switch-side end of a host's veth,
// taken off the bridge) and a new TAP device TAPNAME (which the caller puts on the bridge):
// frames PEERDEV receives (what the host's interface sent, its egress) reach the TAP DELAY_MS
// later, in order; frames the bridge sends out of the TAP go to PEERDEV at once.
//
//   ip netns exec SWITCH_NS delay-link PEERDEV TAPNAME DELAY_MS    (prints "ready" once the TAP exists)
//
// Both ends carry a virtio-net header (PACKET_VNET_HDR, IFF_VNET_HDR): a veth hands over GSO
// frames (up to 64 KiB) and frames whose checksum the sender left to offload; the header keeps
// both intact across the hop, so no offload has to be turned off (this needs no ethtool).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME (256 * 1024)  /* virtio-net header + a GSO frame (64 KiB; more with BIG TCP) */
#define MAX_QUEUED_BYTES (64L << 20)
#define MAX_QUEUED_FRAMES 100000

struct frame { struct frame *next; long long due; size_t len; unsigned char data[]; };
static struct frame *head, *tail;
static long queued_bytes, queued_frames, delayed, dropped;
static volatile sig_atomic_t stop;
static unsigned char buf[MAX_FRAME];

static long long now_ns (void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die (const char *what) {
  fprintf(stderr, "delay-link: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void on_signal (int sig) { (void)sig; stop = 1; }

int main (int argc, char **argv) {
  if (argc != 4 || atoll(argv[3]) < 0) {
    fprintf(stderr, "delay-link: usage: delay-link PEERDEV TAPNAME DELAY_MS\n");
    return 2;
  }
  const long long delay = atoll(argv[3]) * 1000000LL;
  const int ifindex = (int)if_nametoindex(argv[1]);
  if (ifindex == 0) die(argv[1]);

  int pkt = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (pkt < 0) die("packet socket");
  int one = 1;
  if (setsockopt(pkt, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) die("PACKET_VNET_HDR");
  struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = ifindex };
  if (bind(pkt, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind");
  struct packet_mreq mr = { .mr_ifindex = ifindex, .mr_type = PACKET_MR_PROMISC };
  if (setsockopt(pkt, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) die("PACKET_MR_PROMISC");
  int rcvbuf = 8 << 20;  /* room for bursts while this process waits for the CPU */
  setsockopt(pkt, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);

  int tap = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
  if (tap < 0) die("/dev/net/tun");
  struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
  strncpy(ifr.ifr_name, argv[2], IFNAMSIZ - 1);
  if (ioctl(tap, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  // the bridge may then hand GSO frames to the TAP whole, as it would to the veth
  if (ioctl(tap, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) die("TUNSETOFFLOAD");
  struct ifreq mtu = { 0 };
  strncpy(mtu.ifr_name, argv[1], IFNAMSIZ - 1);
  if (ioctl(pkt, SIOCGIFMTU, &mtu) < 0) die("SIOCGIFMTU");
  strncpy(mtu.ifr_name, argv[2], IFNAMSIZ - 1);
  if (ioctl(pkt, SIOCSIFMTU, &mtu) < 0) die("SIOCSIFMTU");

  // SIGTERM/SIGINT stay blocked except inside ppoll(), so none is lost between the check and the wait
  sigset_t block, waitmask;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigprocmask(SIG_BLOCK, &block, &waitmask);
  struct sigaction sa = { .sa_handler = on_signal };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  printf("ready\n");
  fflush(stdout);

  while (!stop) {
    long long t = now_ns();
    while (head != NULL && head->due <= t) {  /* due frames, oldest first */
      struct frame *f = head;
      head = f->next;
      if (head == NULL) tail = NULL;
      if (write(tap, f->data, f->len) < 0) dropped++;
      queued_bytes -= (long)f->len;
      queued_frames--;
      free(f);
    }
    struct timespec timeout, *wait = NULL;
    if (head != NULL) {
      long long w = head->due - t;
      timeout.tv_sec = w / 1000000000LL;
      timeout.tv_nsec = w % 1000000000LL;
      wait = &timeout;
    }
    struct pollfd p[2] = { { .fd = pkt, .events = POLLIN }, { .fd = tap, .events = POLLIN } };
    if (ppoll(p, 2, wait, &waitmask) < 0) {
      if (errno == EINTR) continue;
      die("ppoll");
    }
    // the host's egress: queued, due DELAY_MS after it arrived (a batch at a time, then check the clock)
    for (int i = 0; i < 64 && (p[0].revents & POLLIN); i++) {
      socklen_t len = sizeof sll;
      ssize_t n = recvfrom(pkt, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&sll, &len);
      if (n < 0) break;
      if (sll.sll_pkttype == PACKET_OUTGOING) continue;  /* what this process sent toward the host */
      if ((size_t)n > sizeof buf || queued_bytes + n > MAX_QUEUED_BYTES || queued_frames >= MAX_QUEUED_FRAMES) { dropped++; continue; }
      struct frame *f = malloc(sizeof *f + (size_t)n);
      if (f == NULL) { dropped++; continue; }
      f->next = NULL;
      f->due = now_ns() + delay;
      f->len = (size_t)n;
      memcpy(f->data, buf, (size_t)n);
      if (tail != NULL) tail->next = f; else head = f;
      tail = f;
      queued_bytes += n;
      queued_frames++;
      delayed++;
    }
    // toward the host: at once
    for (int i = 0; i < 64 && (p[1].revents & POLLIN); i++) {
      ssize_t n = read(tap, buf, sizeof buf);
      if (n < 0) break;
      if (send(pkt, buf, (size_t)n, 0) < 0) dropped++;
    }
  }
  fprintf(stderr, "delay-link: %s: %ld frames delayed, %ld dropped, %ld still queued\n", argv[1], delayed, dropped, queued_frames);
  return 0;
}
