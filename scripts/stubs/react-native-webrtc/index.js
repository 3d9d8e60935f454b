// Plexus runs in Node, where @libp2p/webrtc never loads react-native-webrtc (only its React Native build does).
throw new Error('react-native-webrtc is not available in this install: Plexus runs @libp2p/webrtc on Node (node-datachannel)')
