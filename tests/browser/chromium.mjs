// The command-line flags every browser test starts Debian's Chromium with: headless as
// root, no network of its own (this machine's network is closed; background fetches would
// be refused many at a time), fake camera and microphone, and real IP candidates.
export const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
];
