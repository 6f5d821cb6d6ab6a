package dns

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenUDP binds a UDP socket; a transparent one also has IP_TRANSPARENT
// (accept TPROXY-redirected datagrams for foreign addresses) and
// IP_RECVORIGDSTADDR (learn each datagram's original destination), for v4
// and v6.
func listenUDP(addr string, transparent bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		if !transparent {
			return nil
		}
		return setTransparent(c, network, true)
	}}
	pc, err := lc.ListenPacket(context.Background(), family("udp", addr), addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// listenTCP binds a TCP listener; a transparent one accepts
// TPROXY-redirected connections, whose local address is the original
// destination.
func listenTCP(addr string, transparent bool) (*net.TCPListener, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		if !transparent {
			return nil
		}
		return setTransparent(c, network, false)
	}}
	l, err := lc.Listen(context.Background(), family("tcp", addr), addr)
	if err != nil {
		return nil, err
	}
	return l.(*net.TCPListener), nil
}

// family pins the socket family to the address's: an IPv4 address (the
// wildcard 0.0.0.0 included) gets an AF_INET socket, where Go would
// otherwise open a dual-stack AF_INET6 one and the IPv4-level options
// (IP_TRANSPARENT, IP_RECVORIGDSTADDR) would not apply.
func family(network, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return network
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is4() {
			return network + "4"
		}
		return network + "6"
	}
	return network
}

func setTransparent(c syscall.RawConn, network string, recvOrigDst bool) error {
	v6 := network == "udp6" || network == "tcp6"
	var serr error
	err := c.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			if serr == nil && recvOrigDst {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
			}
			// A dual-stack socket also receives IPv4: it needs the IPv4-level
			// options too (best effort: a v6-only socket refuses them).
			_ = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			if recvOrigDst {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
			}
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			if serr == nil && recvOrigDst {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", serr)
	}
	return nil
}

// origDst finds the IP_ORIGDSTADDR (or IPV6_ORIGDSTADDR) control message.
func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			// struct sockaddr_in: family, port (network order), addr.
			port := binary.BigEndian.Uint16(m.Data[2:4])
			ip := netip.AddrFrom4([4]byte(m.Data[4:8]))
			return netip.AddrPortFrom(ip, port), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			// struct sockaddr_in6: family, port, flowinfo, addr, scope.
			port := binary.BigEndian.Uint16(m.Data[2:4])
			ip := netip.AddrFrom16([16]byte(m.Data[8:24]))
			return netip.AddrPortFrom(ip.Unmap(), port), true
		}
	}
	return netip.AddrPort{}, false
}

// sendFrom sends a datagram to `to` from the foreign address `from` (the
// query's original destination), through a short-lived IP_TRANSPARENT
// socket bound to it. The socket is closed at once: while it exists, it
// would also receive datagrams sent to `from` (TPROXY's socket lookup finds
// it before the listener).
func sendFrom(from, to netip.AddrPort, b []byte, mark int) error {
	family, level, opt := unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT
	if from.Addr().Is6() {
		family, level, opt = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("reply socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fmt.Errorf("reply socket IP_TRANSPARENT: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("reply socket SO_REUSEADDR: %w", err)
	}
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
			return fmt.Errorf("reply socket SO_MARK: %w", err)
		}
	}
	if err := unix.Bind(fd, sockaddr(from)); err != nil {
		return fmt.Errorf("reply socket bind %s: %w", from, err)
	}
	if err := unix.Sendto(fd, b, 0, sockaddr(to)); err != nil {
		return fmt.Errorf("reply to %s: %w", to, err)
	}
	return nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// markControl sets SO_MARK on upstream sockets when mark is non-zero.
func markControl(mark int) func(string, string, syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK (needs CAP_NET_ADMIN): %w", serr)
		}
		return nil
	}
}
