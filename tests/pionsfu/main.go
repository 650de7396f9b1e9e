// pionsfu: a small SFU built on pion/webrtc v3 that serves every session on ONE
// UDP port (and one ICE-TCP port) the way Mattermost's rtcd and the Calls
// plugin's integrated SFU do: SettingEngine.SetICEUDPMux / SetICETCPMux
// (rtcd: service/rtc/server.go initUDP/initTCP; pion: icemux.go).
//
// It exists for callsctl's tests of `check rtc`, `check rtcd` and
// `check webrtc --mattermost` against a server that behaves like the field:
//
//   - a bare STUN Binding request on the media port is dropped silently,
//     because pion's mux only routes STUN whose USERNAME names a live
//     session's ufrag (ice/v2 udp_mux.go, tcp_mux.go); nothing here adds that
//     behaviour, pion does it by itself;
//   - a real session (offer, answer, trickled candidates, ICE, DTLS, SRTP,
//     SCTP) works, and audio from one session of a call is forwarded to the
//     others, so media flows both ways between two participants;
//   - the calls-dc data channel answers "ping" with "pong", as rtcd's
//     service/rtc/dc.go does.
//
// Signaling is NOT rtcd's or the plugin's protocol: the Python stand-ins in
// tests/mmstandin.py speak those to callsctl and hand the SDP here over a
// small local HTTP control API:
//
//	POST   /sessions/{id}/offer      {"call": C, "sdp": {"type":"offer","sdp":...}}
//	                                 -> {"answer": {...}, "candidates": [ICECandidateInit]}
//	POST   /sessions/{id}/candidate  ICECandidateInit
//	DELETE /sessions/{id}
//	GET    /stats                    {"sessions": n, "connected": n, "rtp_packets": n}
//
// Build (GOPATH mode, Debian's packages, offline):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o pionsfu tests/pionsfu/main.go
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v3"
)

type session struct {
	id       string
	call     string
	pc       *webrtc.PeerConnection
	downlink *webrtc.TrackLocalStaticRTP
}

type sfu struct {
	api        *webrtc.API
	mu         sync.Mutex
	sessions   map[string]*session
	connected  int64
	rtpPackets int64
}

func main() {
	udpAddr := flag.String("udp", "127.0.0.1:0", "media address (one UDP port for all sessions)")
	tcpAddr := flag.String("tcp", "", "ICE-TCP address (empty: no TCP candidates)")
	control := flag.String("control", "127.0.0.1:0", "control HTTP address")
	override := flag.String("ice-host-override", "", "address to advertise in host candidates (1:1 NAT)")
	flag.Parse()

	udpConn, err := net.ListenPacket("udp4", *udpAddr)
	if err != nil {
		log.Fatalf("listen udp %s: %v", *udpAddr, err)
	}
	settings := webrtc.SettingEngine{}
	settings.SetICEUDPMux(webrtc.NewICEUDPMux(nil, udpConn))
	networks := []webrtc.NetworkType{webrtc.NetworkTypeUDP4}
	tcpPort := 0
	if *tcpAddr != "" {
		tcpListener, err := net.Listen("tcp4", *tcpAddr)
		if err != nil {
			log.Fatalf("listen tcp %s: %v", *tcpAddr, err)
		}
		tcpPort = tcpListener.Addr().(*net.TCPAddr).Port
		settings.SetICETCPMux(webrtc.NewICETCPMux(nil, tcpListener, 32))
		networks = append(networks, webrtc.NetworkTypeTCP4)
	}
	settings.SetNetworkTypes(networks)
	settings.SetIncludeLoopbackCandidate(true)
	if *override != "" {
		settings.SetNAT1To1IPs([]string{*override}, webrtc.ICECandidateTypeHost)
	}

	media := &webrtc.MediaEngine{}
	if err := media.RegisterDefaultCodecs(); err != nil {
		log.Fatal(err)
	}
	registry := newRegistry(media)
	s := &sfu{
		api:      webrtc.NewAPI(webrtc.WithMediaEngine(media), webrtc.WithSettingEngine(settings), webrtc.WithInterceptorRegistry(registry)),
		sessions: map[string]*session{},
	}

	ln, err := net.Listen("tcp4", *control)
	if err != nil {
		log.Fatalf("listen control %s: %v", *control, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/sessions/", s.handleSession)
	mux.HandleFunc("/stats", s.handleStats)
	ready, _ := json.Marshal(map[string]int{
		"udp_port":     udpConn.LocalAddr().(*net.UDPAddr).Port,
		"tcp_port":     tcpPort,
		"control_port": ln.Addr().(*net.TCPAddr).Port,
	})
	fmt.Println(string(ready))
	os.Stdout.Sync()
	log.Fatal(http.Serve(ln, mux))
}

func (s *sfu) handleStats(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	writeJSON(w, map[string]int64{"sessions": int64(n), "connected": atomic.LoadInt64(&s.connected),
		"rtp_packets": atomic.LoadInt64(&s.rtpPackets)})
}

func (s *sfu) handleSession(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/sessions/"), "/")
	id := parts[0]
	if id == "" {
		http.Error(w, "missing session id", http.StatusBadRequest)
		return
	}
	switch {
	case r.Method == http.MethodDelete && len(parts) == 1:
		s.closeSession(id)
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && len(parts) == 2 && parts[1] == "offer":
		var req struct {
			Call string                    `json:"call"`
			SDP  webrtc.SessionDescription `json:"sdp"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		answer, candidates, err := s.offer(id, req.Call, req.SDP)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]any{"answer": answer, "candidates": candidates})
	case r.Method == http.MethodPost && len(parts) == 2 && parts[1] == "candidate":
		var c webrtc.ICECandidateInit
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		sess := s.sessions[id]
		s.mu.Unlock()
		if sess == nil {
			http.Error(w, "no such session", http.StatusNotFound)
			return
		}
		if c.Candidate != "" {
			if err := sess.pc.AddICECandidate(c); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

// offer answers a session's first offer. Every session gets one outgoing audio
// track on the transceiver of its own audio m-line; RTP from the other
// sessions of its call is written to it (enough for the two participants of
// a test call, and no renegotiation).
func (s *sfu) offer(id, call string, offer webrtc.SessionDescription) (*webrtc.SessionDescription, []webrtc.ICECandidateInit, error) {
	s.mu.Lock()
	if _, exists := s.sessions[id]; exists {
		s.mu.Unlock()
		return nil, nil, errors.New("session exists (renegotiation is not supported here)")
	}
	s.mu.Unlock()
	pc, err := s.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, nil, err
	}
	downlink, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "voice", "sfu-"+id)
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	sess := &session{id: id, call: call, pc: pc, downlink: downlink}

	var mu sync.Mutex
	var candidates []webrtc.ICECandidateInit
	pc.OnICECandidate(func(c *webrtc.ICECandidate) {
		if c != nil {
			mu.Lock()
			candidates = append(candidates, c.ToJSON())
			mu.Unlock()
		}
	})
	pc.OnConnectionStateChange(func(state webrtc.PeerConnectionState) {
		log.Printf("session %s: %s", id, state)
		switch state {
		case webrtc.PeerConnectionStateConnected:
			atomic.AddInt64(&s.connected, 1)
		case webrtc.PeerConnectionStateFailed:
			s.closeSession(id)
		}
	})
	pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnMessage(func(msg webrtc.DataChannelMessage) {
			switch {
			case msg.IsString && string(msg.Data) == "ping":
				_ = dc.SendText("pong")
			case !msg.IsString && len(msg.Data) == 1 && msg.Data[0] == 1: // msgpack uint 1: ping
				_ = dc.Send([]byte{2})
			}
		})
	})
	pc.OnTrack(func(track *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		buf := make([]byte, 1500)
		for {
			n, _, err := track.Read(buf)
			if err != nil {
				return
			}
			atomic.AddInt64(&s.rtpPackets, 1)
			for _, other := range s.others(sess) {
				_, _ = other.downlink.Write(buf[:n])
			}
		}
	})

	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetRemoteDescription(offer); err != nil {
		pc.Close()
		return nil, nil, err
	}
	if _, err := pc.AddTrack(downlink); err != nil {
		pc.Close()
		return nil, nil, err
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	if err := pc.SetLocalDescription(answer); err != nil {
		pc.Close()
		return nil, nil, err
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
	}
	s.mu.Lock()
	s.sessions[id] = sess
	s.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	// The answer goes out without candidates; they follow one by one, as rtcd
	// trickles them (service/rtc/sfu.go OnICECandidate -> ICEMessage).
	return &answer, candidates, nil
}

func (s *sfu) others(me *session) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*session
	for _, other := range s.sessions {
		if other != me && other.call == me.call {
			out = append(out, other)
		}
	}
	return out
}

func (s *sfu) closeSession(id string) {
	s.mu.Lock()
	sess := s.sessions[id]
	delete(s.sessions, id)
	s.mu.Unlock()
	if sess != nil {
		go sess.pc.Close()
	}
}

// newRegistry adds pion's default interceptors (NACK, RTCP reports, TWCC), as
// rtcd does, so the sender of a track gets receiver reports (and an RTT).
func newRegistry(media *webrtc.MediaEngine) *interceptor.Registry {
	registry := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(media, registry); err != nil {
		log.Fatal(err)
	}
	return registry
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
