// The whole browser side of Mattermost's calls client that joins a call:
// RTCPeer, unchanged, exposed to the test page's glue.
import {RTCPeer} from "@mattermost/calls-common";

window.RTCPeer = RTCPeer;
